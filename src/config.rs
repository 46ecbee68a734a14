//! The operator's YAML configuration.
//!
//! Loading is two steps: `serde_yaml_ng` into structs that refuse unknown keys (a typo must not
//! silently fall back to a default), then [`Config::validate`], which collects *every* problem so
//! that `--check` can show them all at once instead of one per run.
//!
//! Secrets live in [`Secret`], whose `Debug` is redacted, so a `{:?}` of the config can never
//! leak a password into the logs. Each secret can also come from an environment variable
//! (see [`ENV_MATRIX_PASSWORD`] and friends), which wins over the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Overrides `matrix.password`.
pub const ENV_MATRIX_PASSWORD: &str = "VERTOBOT_MATRIX_PASSWORD";
/// Overrides `matrix.access_token`.
pub const ENV_MATRIX_ACCESS_TOKEN: &str = "VERTOBOT_MATRIX_ACCESS_TOKEN";
/// Overrides `matrix.store_passphrase`.
pub const ENV_MATRIX_STORE_PASSPHRASE: &str = "VERTOBOT_MATRIX_STORE_PASSPHRASE";
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
        /// serde_yaml_ng's message, which names the location but never echoes values.
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
    /// Routes, first match wins; `calls.destination` when none matches.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DTMF in both directions.
    #[serde(default)]
    pub dtmf: DtmfConfig,
    /// The `!dial` command.
    #[serde(default)]
    pub dial: DialConfig,
    /// Who may use the bridge.
    #[serde(default)]
    pub access: AccessConfig,
    /// Where the device id, access token, sync position and verto session live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Calls from FreeSWITCH to Matrix users.
    #[serde(default)]
    pub inbound: InboundConfig,
}

/// `inbound:` section: which Matrix user a call from FreeSWITCH rings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// First match wins, after the channel variable `verto_svar_matrix_user`.
    #[serde(default)]
    pub routes: Vec<InboundRoute>,
    /// Rung when neither the variable nor a route names a user; unset: such calls are refused.
    #[serde(default)]
    pub default_user: Option<String>,
    /// How long Matrix rings (room creation and the user's join included) before the call is
    /// given up as not answered.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_secs: u64,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            default_user: None,
            ring_timeout_secs: default_ring_timeout(),
        }
    }
}

fn default_ring_timeout() -> u64 {
    45
}

/// One entry of `inbound.routes`: `*` globs over FreeSWITCH's caller and callee id numbers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundRoute {
    /// Glob over `caller_id_number`; absent matches any.
    #[serde(default)]
    pub caller: Option<String>,
    /// Glob over `callee_id_number`; absent matches any.
    #[serde(default)]
    pub callee: Option<String>,
    /// The Matrix user to ring.
    pub user: String,
}

/// `metrics:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the HTTP listener for `/metrics`, `/health/live` and `/health/ready`;
    /// unset (the default): no listener.
    #[serde(default)]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The validated listen address, if set.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }
}

impl MatrixConfig {
    /// How old the last successful sync may be for the bridge to count as healthy: a sync
    /// returns at least every `sync_timeout_secs`; two of them and a margin.
    pub fn health_limit_secs(&self) -> u64 {
        2 * self.sync_timeout_secs + 60
    }
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
    /// Accept any TLS certificate from the homeserver. For tests only; logged loudly.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Encrypts the encryption store (the bot's device keys) at rest. Without it the store
    /// is kept unencrypted, with a warning at start.
    #[serde(default)]
    pub store_passphrase: Option<Secret>,
    /// Calls in encrypted rooms.
    #[serde(default)]
    pub encryption: EncryptionConfig,
}

/// `matrix.encryption:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Off: encrypted rooms are not served (their events cannot be read).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whose devices' events the bot decrypts and whose devices get its keys.
    #[serde(default)]
    pub trust: crate::matrix::crypto::Trust,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trust: Default::default(),
        }
    }
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
    /// Accept any TLS certificate from FreeSWITCH. For tests only; logged loudly.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
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
    /// Without the marker, dial once every transport has a usable candidate and no
    /// candidates event has come for this long (0: always wait `candidate_wait_ms`).
    #[serde(default = "default_candidate_quiet")]
    pub candidate_quiet_ms: u64,
    /// Upper bound on candidates taken from one call (a flood guard).
    #[serde(default = "default_max_candidates")]
    pub max_candidates: usize,
    /// Upper bound on the offer SDP size in bytes.
    #[serde(default = "default_max_sdp")]
    pub max_sdp_bytes: usize,
    /// Template for the caller id name FreeSWITCH shows (see [`TEMPLATE_FIELDS`]).
    #[serde(default = "default_cid_name")]
    pub caller_id_name: String,
    /// Template for the caller id number.
    #[serde(default = "default_cid_number")]
    pub caller_id_number: String,
    /// DTMF digits sent once the call is answered (empty: none).
    #[serde(default)]
    pub digits_on_answer: String,
    /// Pause between the answer and `digits_on_answer`.
    #[serde(default = "default_digits_delay")]
    pub digits_delay_ms: u64,
    /// Tell callers in the room, as a notice, why a call failed.
    #[serde(default = "default_true")]
    pub notices: bool,
    /// Concurrent calls over all users.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Concurrent calls of one Matrix user.
    #[serde(default = "default_max_calls_per_user")]
    pub max_calls_per_user: usize,
    /// Longest answered call, in seconds (0: no limit).
    #[serde(default = "default_max_call_secs")]
    pub max_call_secs: u64,
    /// What a stop signal does to answered calls.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
}

/// What SIGINT/SIGTERM does to answered calls.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Hang up every call on both sides.
    #[default]
    Hangup,
    /// Keep answered version 1 calls for the next start, which recovers them (rolling
    /// upgrades); other calls are hung up.
    Detach,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            destination: default_destination(),
            candidate_wait_ms: default_candidate_wait(),
            candidate_quiet_ms: default_candidate_quiet(),
            max_candidates: default_max_candidates(),
            max_sdp_bytes: default_max_sdp(),
            caller_id_name: default_cid_name(),
            caller_id_number: default_cid_number(),
            digits_on_answer: String::new(),
            digits_delay_ms: default_digits_delay(),
            notices: true,
            max_calls: default_max_calls(),
            max_calls_per_user: default_max_calls_per_user(),
            max_call_secs: default_max_call_secs(),
            on_shutdown: OnShutdown::Hangup,
        }
    }
}

/// Placeholders the caller id templates accept.
pub const TEMPLATE_FIELDS: &[&str] = &["display_name", "localpart", "user_id", "server"];

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A label for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches the room: `!id:server` or `#alias:server`.
    #[serde(default)]
    pub room: Option<String>,
    /// Matches the caller: `@user:server` (a `*` glob over user ids) or a server glob such as
    /// `example.org` or `*.example.org`.
    #[serde(default)]
    pub user: Option<String>,
    /// Where the call goes.
    pub destination: String,
    /// Overrides `calls.caller_id_name`.
    #[serde(default)]
    pub caller_id_name: Option<String>,
    /// Overrides `calls.caller_id_number`.
    #[serde(default)]
    pub caller_id_number: Option<String>,
    /// Overrides `calls.digits_on_answer`.
    #[serde(default)]
    pub digits_on_answer: Option<String>,
    /// Overrides `calls.digits_delay_ms`.
    #[serde(default)]
    pub digits_delay_ms: Option<u64>,
}

/// `dtmf:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtmfConfig {
    /// Most digits in one `!dtmf` command.
    #[serde(default = "default_max_digits")]
    pub max_digits: usize,
    /// Post digits pressed by the far end as notices (needs FreeSWITCH event permissions).
    #[serde(default)]
    pub report_far_end: bool,
    /// Far-end digits closer together than this go into one notice.
    #[serde(default = "default_burst")]
    pub burst_ms: u64,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        Self {
            max_digits: default_max_digits(),
            report_far_end: false,
            burst_ms: default_burst(),
        }
    }
}

/// `dial:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialConfig {
    /// A regular expression a `!dial` number must match in full; unset: `!dial` is off.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// `access:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Who may invite the bot and call: user ids or server names, `*` globs allowed. Empty:
    /// users of the bot's own homeserver.
    #[serde(default)]
    pub allow: Vec<String>,
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
fn default_candidate_quiet() -> u64 {
    400
}
fn default_max_candidates() -> usize {
    64
}
fn default_max_sdp() -> usize {
    64 * 1024
}
fn default_cid_name() -> String {
    "{display_name}".into()
}
fn default_cid_number() -> String {
    "{localpart}".into()
}
fn default_digits_delay() -> u64 {
    1500
}
fn default_true() -> bool {
    true
}
fn default_max_calls() -> usize {
    20
}
fn default_max_calls_per_user() -> usize {
    2
}
fn default_max_call_secs() -> u64 {
    4 * 3600
}
fn default_max_digits() -> usize {
    32
}
fn default_burst() -> u64 {
    1500
}

/// A DTMF digit as FreeSWITCH takes it: `0-9 * # A-D` (either case), and `w`/`W` pauses. The
/// one definition for the configuration's digits and the `!dtmf` command alike.
pub fn is_dtmf_digit(c: char) -> bool {
    c.is_ascii_digit() || "*#ABCDabcdwW".contains(c)
}

/// Checks a DTMF digit string (see [`is_dtmf_digit`]).
pub fn valid_digits(d: &str) -> bool {
    !d.is_empty() && d.chars().all(is_dtmf_digit)
}

/// Checks a caller id template: only known `{placeholders}`.
pub fn template_problem(t: &str) -> Option<String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Some("unclosed {".into());
        };
        let name = &after[..close];
        if !TEMPLATE_FIELDS.contains(&name) {
            return Some(format!(
                "unknown placeholder {{{name}}} (known: {})",
                TEMPLATE_FIELDS.join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    None
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
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Secrets from the environment replace those in the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get(ENV_MATRIX_PASSWORD).filter(|v| !v.is_empty()) {
            self.matrix.password = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_MATRIX_ACCESS_TOKEN).filter(|v| !v.is_empty()) {
            self.matrix.access_token = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_MATRIX_STORE_PASSPHRASE).filter(|v| !v.is_empty()) {
            self.matrix.store_passphrase = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_VERTO_PASSWORD).filter(|v| !v.is_empty()) {
            self.verto.password = Some(Secret::new(v));
        }
    }

    /// Checks every value and returns all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        self.matrix.check(&mut p);
        self.verto.check(&mut p);
        self.calls.check(&mut p);
        for (i, r) in self.routes.iter().enumerate() {
            r.check(&format!("routes[{i}]"), &mut p);
        }
        self.dtmf.check(&mut p);
        self.dial.check(&mut p);
        self.access.check(&mut p);
        self.inbound.check(&mut p);
        self.inbound_users_allowed(&mut p);
        if self.state_dir.as_os_str().is_empty() {
            p.push("state_dir: must not be empty".into());
        }
        if let Some(l) = &self.metrics.listen {
            if let Err(e) = l.parse::<std::net::SocketAddr>() {
                p.push(format!(
                    "metrics.listen: not an ip:port such as 127.0.0.1:9100 or [::]:9100 ({e})"
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }
}

impl Config {
    /// A user that `inbound` names but `access.allow` refuses is never rung: every call for
    /// them would be refused at run time, so `--check` says so now.
    fn inbound_users_allowed(&self, p: &mut Vec<String>) {
        let own = crate::matrix::server_name(&self.matrix.user_id);
        let allow = &self.access.allow;
        let named = self
            .inbound
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("inbound.routes[{i}].user"), r.user.as_str()));
        let default = self.inbound.default_user.as_deref();
        let default = default.map(|u| ("inbound.default_user".to_owned(), u));
        for (key, user) in named.chain(default) {
            if !crate::call::route::allowed(allow, own, user) {
                p.push(format!(
                    "{key}: {user} is not on access.allow (an empty list allows only {own}), so calls for them would be refused"
                ));
            }
        }
    }
}

/// An empty secret (`password: ""`) counts as unset: it is a placeholder, not a password.
fn is_set(s: &Option<Secret>) -> bool {
    s.as_ref().is_some_and(|s| !s.expose().is_empty())
}

/// A destination goes into a dial string, where whitespace or control characters would
/// split or corrupt it.
fn bad_destination(d: &str) -> bool {
    d.is_empty() || d.len() > 128 || d.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A full Matrix user id: the one user an inbound call rings (no globs here).
fn bad_user_id(u: &str) -> bool {
    ruma::UserId::parse(u).is_err() || u.contains('*')
}

impl InboundConfig {
    fn check(&self, p: &mut Vec<String>) {
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("inbound.routes[{i}]");
            if bad_user_id(&r.user) {
                p.push(format!(
                    "{key}.user: a full Matrix user id such as @alice:example.org"
                ));
            }
            for (k, g) in [("caller", &r.caller), ("callee", &r.callee)] {
                if g.as_deref().is_some_and(|g| g.is_empty() || g.len() > 128) {
                    p.push(format!(
                        "{key}.{k}: a glob of 1-128 characters (or leave it out)"
                    ));
                }
            }
        }
        if self.default_user.as_deref().is_some_and(bad_user_id) {
            p.push("inbound.default_user: a full Matrix user id such as @alice:example.org".into());
        }
        if !(5..=600).contains(&self.ring_timeout_secs) {
            p.push("inbound.ring_timeout_secs: must be between 5 and 600".into());
        }
    }
}

// Each section adds its problems to the same list, named by their full key, so that
// `validate` reports them all at once and in the file's order.

impl MatrixConfig {
    fn check(&self, p: &mut Vec<String>) {
        match url::Url::parse(&self.homeserver) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => p.push(format!(
                "matrix.homeserver: scheme must be http or https, not {}",
                u.scheme()
            )),
            Err(e) => p.push(format!("matrix.homeserver: not a URL ({e})")),
        }
        if let Err(e) = ruma::UserId::parse(&self.user_id) {
            p.push(format!(
                "matrix.user_id: not a Matrix user id like @bot:example.org ({e})"
            ));
        }
        match (is_set(&self.password), is_set(&self.access_token)) {
            (false, false) => p.push(format!(
                "matrix: set password or access_token (or {ENV_MATRIX_PASSWORD} / {ENV_MATRIX_ACCESS_TOKEN})"
            )),
            (true, true) => p.push("matrix: set only one of password and access_token".into()),
            _ => {}
        }
        if !(1..=300).contains(&self.sync_timeout_secs) {
            p.push("matrix.sync_timeout_secs: must be between 1 and 300".into());
        }
    }
}

impl VertoConfig {
    fn check(&self, p: &mut Vec<String>) {
        match url::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "ws" || u.scheme() == "wss" => {}
            Ok(u) => p.push(format!(
                "verto.url: scheme must be ws or wss, not {}",
                u.scheme()
            )),
            Err(e) => p.push(format!("verto.url: not a URL ({e})")),
        }
        if self.login.trim().is_empty() {
            p.push("verto.login: must not be empty (user@domain)".into());
        }
        if !is_set(&self.password) {
            p.push(format!(
                "verto.password: must be set (or {ENV_VERTO_PASSWORD})"
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                p.push(format!(
                    "verto.ca_file: {} is not a readable file",
                    ca.display()
                ));
            }
        }
        if !(1..=120).contains(&self.request_timeout_secs) {
            p.push("verto.request_timeout_secs: must be between 1 and 120".into());
        }
        if !(1..=600).contains(&self.keepalive_secs) {
            p.push("verto.keepalive_secs: must be between 1 and 600".into());
        }
        if !(1..=3600).contains(&self.reconnect_max_secs) {
            p.push("verto.reconnect_max_secs: must be between 1 and 3600".into());
        }
    }
}

impl CallsConfig {
    fn check(&self, p: &mut Vec<String>) {
        if bad_destination(&self.destination) {
            p.push("calls.destination: must be 1-128 characters without spaces".into());
        }
        if !(100..=30_000).contains(&self.candidate_wait_ms) {
            p.push("calls.candidate_wait_ms: must be between 100 and 30000".into());
        }
        if self.candidate_quiet_ms > 10_000 {
            p.push("calls.candidate_quiet_ms: must be between 0 and 10000".into());
        }
        if !(1..=1000).contains(&self.max_candidates) {
            p.push("calls.max_candidates: must be between 1 and 1000".into());
        }
        if !(1024..=1024 * 1024).contains(&self.max_sdp_bytes) {
            p.push("calls.max_sdp_bytes: must be between 1024 and 1048576".into());
        }
        for (key, t) in [
            ("calls.caller_id_name", &self.caller_id_name),
            ("calls.caller_id_number", &self.caller_id_number),
        ] {
            if let Some(why) = template_problem(t) {
                p.push(format!("{key}: {why}"));
            }
        }
        if !self.digits_on_answer.is_empty() && !valid_digits(&self.digits_on_answer) {
            p.push("calls.digits_on_answer: only 0-9 * # A-D and w/W pauses".into());
        }
        if self.digits_delay_ms > 60_000 {
            p.push("calls.digits_delay_ms: at most 60000".into());
        }
        if !(1..=10_000).contains(&self.max_calls) {
            p.push("calls.max_calls: must be between 1 and 10000".into());
        }
        if !(1..=1000).contains(&self.max_calls_per_user) {
            p.push("calls.max_calls_per_user: must be between 1 and 1000".into());
        }
    }
}

impl RouteConfig {
    /// `key` is `routes[i]`: a route has no name of its own that is sure to be set.
    fn check(&self, key: &str, p: &mut Vec<String>) {
        if let Some(room) = &self.room {
            let ok = (room.starts_with('!') || room.starts_with('#')) && room.contains(':');
            if !ok {
                p.push(format!(
                    "{key}.room: a room id (!id:server) or alias (#name:server)"
                ));
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.chars().any(char::is_whitespace) {
                p.push(format!(
                    "{key}.user: a user id glob (@*:example.org) or a server glob"
                ));
            }
        }
        if bad_destination(&self.destination) {
            p.push(format!(
                "{key}.destination: must be 1-128 characters without spaces"
            ));
        }
        for (k, t) in [
            ("caller_id_name", &self.caller_id_name),
            ("caller_id_number", &self.caller_id_number),
        ] {
            if let Some(why) = t.as_deref().and_then(template_problem) {
                p.push(format!("{key}.{k}: {why}"));
            }
        }
        if let Some(d) = &self.digits_on_answer {
            if !d.is_empty() && !valid_digits(d) {
                p.push(format!(
                    "{key}.digits_on_answer: only 0-9 * # A-D and w/W pauses"
                ));
            }
        }
        if self.digits_delay_ms.is_some_and(|d| d > 60_000) {
            p.push(format!("{key}.digits_delay_ms: at most 60000"));
        }
    }
}

impl DtmfConfig {
    fn check(&self, p: &mut Vec<String>) {
        if !(1..=256).contains(&self.max_digits) {
            p.push("dtmf.max_digits: must be between 1 and 256".into());
        }
        if !(100..=60_000).contains(&self.burst_ms) {
            p.push("dtmf.burst_ms: must be between 100 and 60000".into());
        }
    }
}

impl DialConfig {
    fn check(&self, p: &mut Vec<String>) {
        if let Some(pat) = &self.pattern {
            if let Err(e) = regex::Regex::new(pat) {
                p.push(format!("dial.pattern: not a regular expression ({e})"));
            }
        }
    }
}

impl AccessConfig {
    fn check(&self, p: &mut Vec<String>) {
        for (i, a) in self.allow.iter().enumerate() {
            if a.is_empty() || a.chars().any(char::is_whitespace) {
                p.push(format!(
                    "access.allow[{i}]: a user id or server glob without spaces"
                ));
            }
        }
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
    fn routes_dtmf_dial_access_validation() {
        let yaml = format!(
            "{GOOD}routes:\n  - room: \"nope\"\n    destination: \"30 00\"\n    caller_id_name: \"{{nickname}}\"\n    digits_on_answer: \"12x\"\n  - user: \"*.example.org\"\n    destination: \"5000\"\ndial:\n  pattern: \"([\"\ndtmf:\n  max_digits: 0\n"
        );
        let p = problems(&yaml);
        for key in [
            "routes[0].room",
            "routes[0].destination",
            "routes[0].caller_id_name",
            "routes[0].digits_on_answer",
            "dial.pattern",
            "dtmf.max_digits",
        ] {
            assert!(p.iter().any(|m| m.starts_with(key)), "{key}: {p:?}");
        }
        assert!(!p.iter().any(|m| m.starts_with("routes[1]")), "{p:?}");
    }

    #[test]
    fn inbound_validation() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.inbound.ring_timeout_secs, 45);
        assert!(c.inbound.routes.is_empty() && c.inbound.default_user.is_none());
        let yaml = format!(
            "{GOOD}inbound:\n  routes:\n    - caller: \"+4930*\"\n      user: \"@alice:example.org\"\n    - callee: \"\"\n      user: \"@*:example.org\"\n  default_user: \"bob\"\n  ring_timeout_secs: 2\n"
        );
        let p = problems(&yaml);
        for key in [
            "inbound.routes[1].user",
            "inbound.routes[1].callee",
            "inbound.default_user",
            "inbound.ring_timeout_secs",
        ] {
            assert!(p.iter().any(|m| m.starts_with(key)), "{key}: {p:?}");
        }
        assert!(
            !p.iter().any(|m| m.starts_with("inbound.routes[0]")),
            "{p:?}"
        );
        let unknown = format!("{GOOD}inbound:\n  rooms: []\n");
        assert!(Config::parse(&unknown).is_err());
    }

    /// Users `inbound` names must pass `access.allow` (empty: the bot's own server only), or
    /// every call for them would be refused.
    #[test]
    fn inbound_users_must_be_allowed() {
        let inbound = "inbound:\n  routes:\n    - user: \"@alice:example.org\"\n    - user: \"@eve:elsewhere.example\"\n  default_user: \"@bob:elsewhere.example\"\n";
        let cases = [
            ("", vec!["inbound.routes[1].user", "inbound.default_user"]),
            (
                "access:\n  allow: [\"elsewhere.example\"]\n",
                vec!["inbound.routes[0].user"],
            ),
            ("access:\n  allow: [\"*\"]\n", vec![]),
        ];
        for (access, want) in cases {
            let p = problems(&format!("{GOOD}{access}{inbound}"));
            let got: Vec<&str> = p.iter().filter_map(|m| m.split(':').next()).collect();
            assert_eq!(got, want, "{access}: {p:?}");
        }
    }

    #[test]
    fn digits_and_templates() {
        for (d, ok) in [
            ("1234#", true),
            ("*5", true),
            ("12w34W#", true),
            ("ABCD", true),
            ("", false),
            ("12x", false),
            ("1 2", false),
        ] {
            assert_eq!(valid_digits(d), ok, "{d}");
        }
        assert_eq!(template_problem("{display_name} ({localpart})"), None);
        assert!(template_problem("{nick}").is_some());
        assert!(template_problem("{localpart").is_some());
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
    fn metrics_listen_is_optional_and_checked() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(cfg.metrics.listen, None);
        assert_eq!(cfg.metrics.addr(), None);
        for ok in ["127.0.0.1:9100", "0.0.0.0:9100", "[::]:9100"] {
            let yaml = format!("{GOOD}metrics:\n  listen: \"{ok}\"\n");
            assert_eq!(problems(&yaml), Vec::<String>::new(), "{ok}");
            let cfg = Config::parse(&yaml).unwrap();
            assert_eq!(cfg.metrics.addr(), Some(ok.parse().unwrap()));
        }
        for bad in ["localhost:9100", "9100", "127.0.0.1", ""] {
            let yaml = format!("{GOOD}metrics:\n  listen: \"{bad}\"\n");
            let p = problems(&yaml);
            assert!(
                p.len() == 1 && p[0].starts_with("metrics.listen: "),
                "{bad}: {p:?}"
            );
        }
        // Listed with the others by --check.
        let yaml = format!("{GOOD}metrics:\n  listen: \"nope\"\n").replace("wss://", "tcp://");
        assert_eq!(problems(&yaml).len(), 2);
        let yaml = format!("{GOOD}metrics:\n  listn: \"127.0.0.1:9100\"\n");
        assert!(Config::parse(&yaml).is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cfg = Config::parse(GOOD).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("\"pw\"") && !dbg.contains("1234\""), "{dbg}");
    }
}
