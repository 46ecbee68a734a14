//! The `vertobot` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Bridge Matrix 1:1 calls to FreeSWITCH mod_verto.
#[derive(Parser, Debug)]
#[command(name = "vertobot", version, about)]
struct Cli {
    /// The YAML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration, print every problem, and exit.
    #[arg(long)]
    check: bool,
    /// Exit 0 if the running bridge (same configuration) synced with the homeserver recently,
    /// else 1: for container health checks.
    #[arg(long, conflicts_with = "check")]
    health: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match vertobot::config::Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if cli.health {
        let limit = cfg.matrix.health_limit_secs();
        let age = vertobot::state::StateStore::open(&cfg.state_dir)
            .ok()
            .and_then(|s| s.alive_age().ok().flatten());
        return match age {
            Some(a) if a <= limit => {
                println!("healthy: last sync {a} s ago");
                ExitCode::SUCCESS
            }
            Some(a) => {
                println!("unhealthy: last sync {a} s ago (limit {limit} s)");
                ExitCode::FAILURE
            }
            None => {
                println!(
                    "unhealthy: no successful sync recorded in {}",
                    cfg.state_dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(vertobot::log_filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        ))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("stop signal received");
            signals.cancel();
        });
        match vertobot::run(cfg, cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
