//! The operator's YAML configuration.
//!
//! Loading is two steps: `serde_yaml` into structs that refuse unknown keys (a typo must not
//! silently fall back to a default), then [`Config::validate`], which collects *every* problem so
//! that `--check` can show them all at once instead of one per run.
//!
//! Secrets live in [`Secret`], whose `Debug` is redacted, so a `{:?}` of the config can never
//! leak a password into the logs. Each secret can also come from an environment variable
//! (see [`ENV_MATRIX_PASSWORD`] and friends), which wins over the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Overrides `matrix.password`.
pub const ENV_MATRIX_PASSWORD: &str = "VERTOBOT_MATRIX_PASSWORD";
/// Overrides `matrix.access_token`.
pub const ENV_MATRIX_ACCESS_TOKEN: &str = "VERTOBOT_MATRIX_ACCESS_TOKEN";
/// Overrides `verto.password`.
pub const ENV_VERTO_PASSWORD: &str = "VERTOBOT_VERTO_PASSWORD";

/// Errors of the configuration layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML did not match the expected shape (unknown key, wrong type ...).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message, which names the location but never echoes values.
        message: String,
    },
    /// The values parsed but some are unusable; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A string that must never be logged.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Matrix side.
    pub matrix: MatrixConfig,
    /// The FreeSWITCH side.
    pub verto: VertoConfig,
    /// Call policy.
    #[serde(default)]
    pub calls: CallsConfig,
    /// Where the device id, access token, sync position and verto session live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// `matrix:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Base URL of the client-server API.
    pub homeserver: String,
    /// The bot's full user id.
    pub user_id: String,
    /// Password login (the access token is then kept in `state_dir`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A ready access token instead of a password.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Shown in the user's session list.
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// Long-poll timeout of `/sync`.
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout_secs: u64,
}

/// `verto:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertoConfig {
    /// `ws://` or `wss://` URL of the mod_verto profile.
    pub url: String,
    /// Verto login, `user@domain`.
    pub login: String,
    /// Verto password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Extra PEM CA bundle for `wss://` with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for FreeSWITCH to answer one request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Interval of our `verto.ping`; a ping without reply means the socket is dead.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Longest pause between reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}

/// `calls:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    /// The extension every call is dialled to.
    #[serde(default = "default_destination")]
    pub destination: String,
    /// How long after the invite we wait for trickled candidates when the caller sends no
    /// end-of-candidates marker. matrix-js-sdk flushes its first batch about 2 s after the
    /// invite and may never send the marker.
    #[serde(default = "default_candidate_wait")]
    pub candidate_wait_ms: u64,
    /// Upper bound on candidates taken from one call (a flood guard).
    #[serde(default = "default_max_candidates")]
    pub max_candidates: usize,
    /// Upper bound on the offer SDP size in bytes.
    #[serde(default = "default_max_sdp")]
    pub max_sdp_bytes: usize,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            destination: default_destination(),
            candidate_wait_ms: default_candidate_wait(),
            max_candidates: default_max_candidates(),
            max_sdp_bytes: default_max_sdp(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./vertobot-state")
}
fn default_device_name() -> String {
    "vertobot".into()
}
fn default_sync_timeout() -> u64 {
    30
}
fn default_request_timeout() -> u64 {
    10
}
fn default_keepalive() -> u64 {
    20
}
fn default_reconnect_max() -> u64 {
    30
}
fn default_destination() -> String {
    "3000".into()
}
fn default_candidate_wait() -> u64 {
    2500
}
fn default_max_candidates() -> usize {
    64
}
fn default_max_sdp() -> usize {
    64 * 1024
}

impl Config {
    /// Reads, parses, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML text without validating it.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// Secrets from the environment replace those in the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get(ENV_MATRIX_PASSWORD).filter(|v| !v.is_empty()) {
            self.matrix.password = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_MATRIX_ACCESS_TOKEN).filter(|v| !v.is_empty()) {
            self.matrix.access_token = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_VERTO_PASSWORD).filter(|v| !v.is_empty()) {
            self.verto.password = Some(Secret::new(v));
        }
    }

    /// Checks every value and returns all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        match url::Url::parse(&self.matrix.homeserver) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => p.push(format!(
                "matrix.homeserver: scheme must be http or https, not {}",
                u.scheme()
            )),
            Err(e) => p.push(format!("matrix.homeserver: not a URL ({e})")),
        }
        if let Err(e) = ruma::UserId::parse(&self.matrix.user_id) {
            p.push(format!(
                "matrix.user_id: not a Matrix user id like @bot:example.org ({e})"
            ));
        }
        let has = |s: &Option<Secret>| s.as_ref().is_some_and(|s| !s.expose().is_empty());
        match (has(&self.matrix.password), has(&self.matrix.access_token)) {
            (false, false) => p.push(format!(
                "matrix: set password or access_token (or {ENV_MATRIX_PASSWORD} / {ENV_MATRIX_ACCESS_TOKEN})"
            )),
            (true, true) => p.push("matrix: set only one of password and access_token".into()),
            _ => {}
        }
        if !(1..=300).contains(&self.matrix.sync_timeout_secs) {
            p.push("matrix.sync_timeout_secs: must be between 1 and 300".into());
        }
        match url::Url::parse(&self.verto.url) {
            Ok(u) if u.scheme() == "ws" || u.scheme() == "wss" => {}
            Ok(u) => p.push(format!(
                "verto.url: scheme must be ws or wss, not {}",
                u.scheme()
            )),
            Err(e) => p.push(format!("verto.url: not a URL ({e})")),
        }
        if self.verto.login.trim().is_empty() {
            p.push("verto.login: must not be empty (user@domain)".into());
        }
        if !has(&self.verto.password) {
            p.push(format!(
                "verto.password: must be set (or {ENV_VERTO_PASSWORD})"
            ));
        }
        if let Some(ca) = &self.verto.ca_file {
            if !ca.is_file() {
                p.push(format!(
                    "verto.ca_file: {} is not a readable file",
                    ca.display()
                ));
            }
        }
        if !(1..=120).contains(&self.verto.request_timeout_secs) {
            p.push("verto.request_timeout_secs: must be between 1 and 120".into());
        }
        if !(1..=600).contains(&self.verto.keepalive_secs) {
            p.push("verto.keepalive_secs: must be between 1 and 600".into());
        }
        if !(1..=3600).contains(&self.verto.reconnect_max_secs) {
            p.push("verto.reconnect_max_secs: must be between 1 and 3600".into());
        }
        let d = &self.calls.destination;
        if d.is_empty() || d.len() > 128 || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push("calls.destination: must be 1-128 characters without spaces".into());
        }
        if !(100..=30_000).contains(&self.calls.candidate_wait_ms) {
            p.push("calls.candidate_wait_ms: must be between 100 and 30000".into());
        }
        if !(1..=1000).contains(&self.calls.max_candidates) {
            p.push("calls.max_candidates: must be between 1 and 1000".into());
        }
        if !(1024..=1024 * 1024).contains(&self.calls.max_sdp_bytes) {
            p.push("calls.max_sdp_bytes: must be between 1024 and 1048576".into());
        }
        if self.state_dir.as_os_str().is_empty() {
            p.push("state_dir: must not be empty".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    /// The verto request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.verto.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
matrix:
  homeserver: "https://matrix.example.org"
  user_id: "@vertobot:example.org"
  password: "pw"
verto:
  url: "wss://fs.example.org:8082"
  login: "1000@example.org"
  password: "1234"
calls:
  destination: "3000"
state_dir: "./st"
"#;

    fn problems(yaml: &str) -> Vec<String> {
        let cfg = Config::parse(yaml).expect("parses");
        match cfg.validate() {
            Ok(()) => vec![],
            Err(ConfigError::Invalid(v)) => v,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn good_config_validates() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config.example.yaml");
        let cfg = Config::parse(text).expect("example parses");
        cfg.validate().expect("example validates");
    }

    #[test]
    fn table_of_bad_values() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "bad homeserver",
                "https://matrix.example.org",
                "matrix.homeserver",
            ),
            ("bad user", "@vertobot:example.org", "matrix.user_id"),
            ("bad verto url", "wss://fs.example.org:8082", "verto.url"),
            ("bad destination", "\"3000\"", "calls.destination"),
        ];
        let replacement = ["ftp://x", "vertobot", "http://fs", "\"30 00\""];
        for ((name, from, key), to) in cases.iter().zip(replacement) {
            let yaml = GOOD.replace(from, to);
            let p = problems(&yaml);
            assert!(p.iter().any(|m| m.starts_with(key)), "{name}: {p:?}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let yaml = GOOD
            .replace("https://matrix.example.org", "nope")
            .replace("wss://", "tcp://")
            .replace("  password: \"1234\"\n", "");
        let p = problems(&yaml);
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let yaml = GOOD.replace("state_dir", "stat_dir");
        assert!(Config::parse(&yaml).is_err());
        let yaml = GOOD.replace("  login:", "  logn:");
        assert!(Config::parse(&yaml).is_err());
    }

    #[test]
    fn password_and_token_are_exclusive() {
        let yaml = GOOD.replace(
            "  password: \"pw\"",
            "  password: \"pw\"\n  access_token: \"t\"",
        );
        assert!(problems(&yaml)[0].contains("only one"));
        let yaml = GOOD.replace("  password: \"pw\"\n", "");
        assert!(problems(&yaml)[0].contains("password or access_token"));
    }

    #[test]
    fn environment_overrides_secrets() {
        let yaml = GOOD.replace("  password: \"1234\"\n", "");
        let mut cfg = Config::parse(&yaml).unwrap();
        cfg.apply_env(|k| (k == ENV_VERTO_PASSWORD).then(|| "from-env".to_string()));
        cfg.validate().unwrap();
        assert_eq!(cfg.verto.password.unwrap().expose(), "from-env");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cfg = Config::parse(GOOD).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("\"pw\"") && !dbg.contains("1234\""), "{dbg}");
    }
}
