//! Load benchmark: vertobot (the release binary, its own process) between a real Synapse and
//! the in-repo fake verto peer, driven by many Matrix users at once. Run it with
//! `tests/bench.sh`, which starts the homeserver; it is not part of `tests/run.sh`.
//!
//! 1. `BENCH_CALLS` (N, default 100) users each open a 1:1 room with the bot.
//! 2. All N place a call at the same instant, as Element does (invite, then two
//!    `m.call.candidates`, the second with the end-of-candidates marker); the fake verto peer
//!    answers at once (FreeSWITCH would be the bottleneck here, not the bridge).
//! 3. More calls are placed (complete offers, a few at a time) until `BENCH_HELD` (M, default
//!    1000) are up, and held for `BENCH_IDLE_SECS` (default 10) seconds with nothing happening.
//!
//! Printed: p50/p99 of the bridge's own time per hop from its `/metrics` histograms (after
//! step 2), setups per second, Matrix requests per call, the bot's RSS per held call and its
//! CPU time and context switches while the calls are held.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::synapse::TestUser;
use support::{FakeVerto, VERTO_PASSWORD};
use tokio::sync::Semaphore;

/// The benchmark's sizes, from the environment.
struct Sizes {
    calls: usize,
    held: usize,
    idle: Duration,
    /// `matrix.encryption.enabled` (`BENCH_ENCRYPTION=0` turns it off).
    encryption: bool,
}

impl Sizes {
    fn from_env() -> Self {
        let num = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let calls = num("BENCH_CALLS", 100).max(1);
        Self {
            calls,
            held: num("BENCH_HELD", 1000).max(calls),
            idle: Duration::from_secs(num("BENCH_IDLE_SECS", 10) as u64),
            encryption: num("BENCH_ENCRYPTION", 1) != 0,
        }
    }
}

/// The bot as a child process, with its metrics port.
struct BotProcess {
    user_id: String,
    child: std::process::Child,
    port: u16,
    http: reqwest::Client,
}

impl BotProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn scrape(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        match self.http.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Scrapes until `ok` holds for the sum of the series starting with `prefix`.
    async fn wait_for(&self, prefix: &str, ok: impl Fn(f64) -> bool, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.scrape().await;
            if ok(sum(&text, prefix)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix} = {} after {limit:?}",
                sum(&text, prefix)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every sample whose series starts with `prefix`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of one series exactly as printed.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A histogram's cumulative buckets: (upper bound, count), for the series whose labels
/// contain `labels` ("" for none).
fn buckets(text: &str, name: &str, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (labelset, value) = rest.split_once("} ")?;
            if !labelset.contains(labels) {
                return None;
            }
            let le = labelset.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.split(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile, interpolated linearly inside its bucket (as Prometheus's
/// `histogram_quantile` does). `None` without observations.
fn quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, n) in b {
        if n >= rank {
            if le.is_infinite() {
                return Some(lo);
            }
            let inside = n - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lo + (le - lo) * frac);
        }
        (lo, below) = (le, n);
    }
    Some(lo)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.3} ms", s * 1000.0))
}

/// Registers `n` users, each with a 1:1 room the bot joined; 8 at a time.
async fn callers(hs: &str, secret: &str, bot: &str, n: usize) -> Vec<(TestUser, String)> {
    let gate = Arc::new(Semaphore::new(8));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (hs, secret, bot, gate) = (
                hs.to_owned(),
                secret.to_owned(),
                bot.to_owned(),
                gate.clone(),
            );
            tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                let mut u = TestUser::new_on(&hs, &secret, "bench").await;
                let room = u.create_dm(&bot).await;
                u.wait_joined(&room, &bot, Duration::from_secs(120)).await;
                (u, room)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("caller setup"));
    }
    out
}

/// A complete offer (the Chromium capture with its candidates merged in), and the trickled
/// candidate events of the capture.
fn complete_offer() -> String {
    let trickled: Vec<vertobot::sdp::TrickleCandidate> = support::chromium_candidates("x")
        .iter()
        .flat_map(|e| e["candidates"].as_array().cloned().unwrap_or_default())
        .map(|c| vertobot::sdp::TrickleCandidate {
            candidate: c["candidate"].as_str().unwrap_or_default().to_owned(),
            sdp_mid: c["sdpMid"].as_str().map(str::to_owned),
            sdp_m_line_index: c["sdpMLineIndex"].as_u64(),
        })
        .collect();
    vertobot::sdp::merge_candidates(support::OFFER, &trickled)
        .expect("the capture merges")
        .sdp
}

/// Starts the release binary on `fake`, with metrics on a free port; waits until it is ready.
async fn start_bot(hs: &str, secret: &str, fake: &FakeVerto, sizes: &Sizes) -> BotProcess {
    let (user_id, password) =
        support::synapse::register_on(hs, secret, &support::synapse::unique("benchbot")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("vertobot-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("state dir");
    let per_user = sizes.held.div_ceil(sizes.calls) + 1;
    let yaml = format!(
        r#"matrix:
  homeserver: "{hs}"
  user_id: "{user_id}"
  password: "{password}"
  encryption:
    enabled: {e2ee}
verto:
  url: "{url}"
  login: "1000@localhost"
  password: "{VERTO_PASSWORD}"
calls:
  destination: "9196"
  max_calls: {max}
  max_calls_per_user: {per_user}
state_dir: "{state}"
metrics:
  listen: "127.0.0.1:{port}"
"#,
        url = fake.url,
        max = sizes.held + 10,
        e2ee = sizes.encryption,
        state = dir.display(),
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("config");
    let log = std::fs::File::create(dir.join("vertobot.log")).expect("log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vertobot"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("vertobot starts");
    println!(
        "bot {user_id}, pid {}, log {}",
        child.id(),
        dir.join("vertobot.log").display()
    );
    let bot = BotProcess {
        user_id,
        child,
        port,
        http: reqwest::Client::new(),
    };
    bot.wait_for("bridge_connected", |v| v == 1.0, Duration::from_secs(60))
        .await;
    bot
}

/// (utime + stime in clock ticks, context switches by thread id) of `pid`.
fn cpu_and_switches(pid: u32) -> (u64, BTreeMap<String, u64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let cpu = ticks(11) + ticks(12);
    let mut switches = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let n = s
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            switches.insert(t.file_name().to_string_lossy().into_owned(), n);
        }
    }
    (cpu, switches)
}

/// Context switches between two snapshots, over the threads in both (idle blocking-pool
/// threads may exit in between).
fn switches_between(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> u64 {
    b.iter()
        .filter_map(|(tid, n)| Some(n.saturating_sub(*a.get(tid)?)))
        .sum()
}

/// The resident set of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Matrix requests by endpoint, without `/sync` (the long poll, not per call).
fn requests(text: &str) -> BTreeMap<String, f64> {
    let prefix = "bridge_matrix_api_calls_total{method=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (method, value) = rest.split_once("\"} ")?;
            Some((method.to_owned(), value.parse().ok()?))
        })
        .filter(|(m, _)| m != "sync")
        .collect()
}

const SETUPS: &str = "vertobot_call_setup_seconds_count";
const SENDS: &str = "bridge_matrix_api_calls_total{method=\"send\"}";
const ACTIVE: &str = "vertobot_calls_active{direction=\"outbound\"}";

/// Step 2: every caller at once, the way Element calls. Returns the wall time until the
/// bridge had sent every `m.call.answer` (the sends counted on top of those in `base`).
async fn concurrent_setups(
    bot: &BotProcess,
    users: &Arc<Vec<(TestUser, String)>>,
    base: &str,
) -> Duration {
    let gate = Arc::new(tokio::sync::Barrier::new(users.len()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..users.len())
        .map(|i| {
            let (users, gate) = (users.clone(), gate.clone());
            tokio::spawn(async move {
                let (u, room) = &users[i];
                let cid = support::call_id();
                gate.wait().await;
                u.send(
                    room,
                    "m.call.invite",
                    support::invite_v1(&cid, support::OFFER, 60000),
                )
                .await;
                for ev in support::chromium_candidates(&cid) {
                    u.send(room, "m.call.candidates", ev).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    let n = users.len() as f64;
    bot.wait_for(SETUPS, |v| v >= n, Duration::from_secs(300))
        .await;
    // Each call's first send is its answer.
    let sent = sample(base, SENDS) + n;
    bot.wait_for(SENDS, |v| v >= sent, Duration::from_secs(300))
        .await;
    start.elapsed()
}

/// Step 3: complete offers, 16 in flight, until `held` calls are up.
async fn fill(bot: &BotProcess, users: &Arc<Vec<(TestUser, String)>>, held: usize) {
    let offer = Arc::new(complete_offer());
    let gate = Arc::new(Semaphore::new(16));
    let placed = bot.scrape().await;
    let more = held.saturating_sub(sample(&placed, ACTIVE) as usize);
    let tasks: Vec<_> = (0..more)
        .map(|i| {
            let (users, gate, offer) = (users.clone(), gate.clone(), offer.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                let (u, room) = &users[i % users.len()];
                let cid = support::call_id();
                let invite = support::invite_v1(&cid, &offer, 600_000);
                u.send(room, "m.call.invite", invite).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    let want = held as f64;
    bot.wait_for(ACTIVE, |v| v >= want, Duration::from_secs(600))
        .await;
    bot.wait_for(SETUPS, |v| v >= want, Duration::from_secs(600))
        .await;
}

/// Matrix requests per call since `base`, by endpoint; prints them and returns the total.
fn per_call(text: &str, base: &str, calls: usize) -> f64 {
    let before = requests(base);
    let mut total = 0.0;
    for (m, v) in requests(text) {
        let d = v - before.get(&m).copied().unwrap_or(0.0);
        if d > 0.0 {
            println!("  {m:<20} {:.2} per call", d / calls as f64);
            total += d;
        }
    }
    total / calls as f64
}

fn report_hops(text: &str, base: &str, n: usize, took: Duration) {
    println!("\n== {n} concurrent call setups ==");
    println!(
        "every m.call.answer sent {:.2} s after the first invite: {:.1} setups/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    for (what, name, labels) in [
        (
            "hop matrix_to_verto",
            "vertobot_hop_seconds",
            "hop=\"matrix_to_verto\"",
        ),
        (
            "hop verto_to_matrix",
            "vertobot_hop_seconds",
            "hop=\"verto_to_matrix\"",
        ),
        (
            "admission (homeserver GETs)",
            "vertobot_admission_seconds",
            "",
        ),
        ("candidate wait", "vertobot_candidate_wait_seconds", ""),
        ("setup (invite → answer)", "vertobot_call_setup_seconds", ""),
    ] {
        let b = buckets(text, name, labels);
        println!(
            "{what:<30} n={:<5} p50 {:>12}  p99 {:>12}",
            b.last().map_or(0.0, |x| x.1),
            ms(quantile(&b, 0.5)),
            ms(quantile(&b, 0.99)),
        );
    }
    println!("Matrix requests per call (no /sync):");
    let total = per_call(text, base, n);
    println!("  {:<20} {total:.2} per call", "all");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` would run it without, in a
    // debug build, as a test: that is not what it is for.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the load benchmark runs with tests/bench.sh");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let sizes = Sizes::from_env();
    let (hs, secret) = support::synapse::homeserver();
    println!(
        "vertobot load benchmark: N={} concurrent setups, M={} held calls, {} s idle, encryption {}",
        sizes.calls,
        sizes.held,
        sizes.idle.as_secs(),
        if sizes.encryption { "on" } else { "off" }
    );
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let bot = start_bot(&hs, &secret, &fake, &sizes).await;
    let t = Instant::now();
    let users = Arc::new(callers(&hs, &secret, &bot.user_id, sizes.calls).await);
    println!(
        "{} callers and rooms ready in {:.1} s",
        users.len(),
        t.elapsed().as_secs_f64()
    );
    let rss_before = rss_kib(bot.pid());
    let base = bot.scrape().await;

    let took = concurrent_setups(&bot, &users, &base).await;
    // Let the last answers' sends finish before counting requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report_hops(&bot.scrape().await, &base, sizes.calls, took);

    let t = Instant::now();
    fill(&bot, &users, sizes.held).await;
    println!(
        "\n== {} held calls == (placed in {:.1} s)",
        sizes.held,
        t.elapsed().as_secs_f64()
    );
    // Settle: the last sends and the allocator.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(bot.pid());
    println!(
        "RSS {:.1} MiB with {} calls, {:.1} MiB before the first: {:.1} KiB per held call",
        rss as f64 / 1024.0,
        sizes.held,
        rss_before as f64 / 1024.0,
        (rss.saturating_sub(rss_before)) as f64 / sizes.held as f64
    );
    let (cpu0, sw0) = cpu_and_switches(bot.pid());
    tokio::time::sleep(sizes.idle).await;
    let (cpu1, sw1) = cpu_and_switches(bot.pid());
    let secs = sizes.idle.as_secs_f64();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    println!(
        "idle with the calls held: CPU {:.2} % of one core ({} ticks in {secs:.0} s), {:.1} context switches/s",
        cpu1.saturating_sub(cpu0) as f64 / secs,
        cpu1.saturating_sub(cpu0),
        switches_between(&sw0, &sw1) as f64 / secs
    );
    println!(
        "Matrix requests per call over all {} calls (no /sync):",
        sizes.held
    );
    let total = per_call(&bot.scrape().await, &base, sizes.held);
    println!("  {:<20} {total:.2} per call", "all");
    drop(bot);
}
