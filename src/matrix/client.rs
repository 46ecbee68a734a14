//! The handful of client-server API calls the bot makes, over reqwest.
//!
//! Errors are classified the way matrix-sdk does (network, transient with `retry_after`,
//! lost token, permanent) so that callers can decide between retrying and giving up. The
//! access token sits behind a lock so a re-login can replace it while other tasks keep their
//! handle.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::chain::Chain;
use crate::config::Secret;

/// Errors of the Matrix layer.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The HTTP client could not be built (TLS backend).
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// No HTTP response (connection refused, timeout ...).
    #[error("cannot reach homeserver {homeserver}")]
    Network {
        /// The homeserver's base URL.
        homeserver: String,
        /// What reqwest saw (its URL removed: the path says nothing the base does not).
        #[source]
        source: reqwest::Error,
    },
    /// The homeserver answered with an error.
    #[error("{status} {errcode}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `errcode`, or `M_UNKNOWN` if the body had none.
        errcode: String,
        /// `error`.
        message: String,
        /// From `retry_after_ms` or the `Retry-After` header.
        retry_after: Option<Duration>,
    },
    /// The response body was not what the spec says.
    #[error("cannot decode response: {0}")]
    Decode(String),
    /// The end-to-end encryption store or state machine failed.
    #[error("{what}")]
    Crypto {
        /// What was being done, in plain words.
        what: String,
        /// The crate's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl MatrixError {
    /// Worth retrying: network failures, 5xx and rate limits.
    pub fn is_transient(&self) -> bool {
        match self {
            MatrixError::Network { .. } => true,
            MatrixError::Api {
                status, errcode, ..
            } => *status >= 500 || *status == 429 || errcode == "M_LIMIT_EXCEEDED",
            MatrixError::Client(_) | MatrixError::Decode(_) | MatrixError::Crypto { .. } => false,
        }
    }
    /// The access token is no longer valid.
    pub fn is_unknown_token(&self) -> bool {
        matches!(self, MatrixError::Api { errcode, .. } if errcode == "M_UNKNOWN_TOKEN")
            || matches!(self, MatrixError::Api { status: 401, .. })
    }
    /// The server's requested pause, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            MatrixError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A logged-in session: what is saved in `state_dir`.
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// The homeserver this token belongs to.
    pub homeserver: String,
    /// Our user id.
    pub user_id: String,
    /// Our device id (also our VoIP `party_id`).
    pub device_id: String,
    /// The access token.
    pub access_token: String,
}

/// Client for one homeserver and one user.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    base: String,
    token: Arc<RwLock<Secret>>,
    metrics: crate::metrics::Metrics,
    /// Set once after login when encryption is on: sending into an encrypted room goes
    /// through it.
    crypto: Arc<std::sync::OnceLock<super::crypto::Crypto>>,
    /// Rooms' members and join rules, kept from answers and the sync.
    facts: Arc<super::room_facts::RoomFacts>,
    /// Unit tests: an in-process homeserver instead of HTTP (see [`FakeHomeserver`]).
    #[cfg(test)]
    fake: Option<FakeHomeserver>,
}

/// An in-process homeserver for unit tests on tokio's paused clock, where sockets do not
/// belong: with virtual time, reqwest's timeouts would fire while a real request is in flight.
/// It gets (method, path after `/_matrix/client/v3`, body) and answers as the homeserver would.
#[cfg(test)]
pub type FakeHomeserver = Arc<
    dyn Fn(
            Method,
            String,
            Option<Value>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, MatrixError>> + Send>,
        > + Send
        + Sync,
>;

/// Response of `GET /joined_members`.
#[derive(Debug, Deserialize)]
struct JoinedMembers {
    joined: HashMap<String, MemberInfo>,
}

/// One joined member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberInfo {
    /// `m.room.member` display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Percent-encodes one path segment (room ids contain `!` and `:`).
pub fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl MatrixClient {
    /// A client that, with `insecure`, accepts any certificate.
    pub fn with_tls(
        homeserver: &str,
        token: Option<Secret>,
        insecure: bool,
    ) -> Result<Self, MatrixError> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vertobot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(MatrixError::Client)?;
        Ok(Self {
            http,
            base: homeserver.trim_end_matches('/').to_owned(),
            token: Arc::new(RwLock::new(token.unwrap_or_default())),
            metrics: Default::default(),
            crypto: Default::default(),
            facts: Default::default(),
            #[cfg(test)]
            fake: None,
        })
    }

    /// A client whose every request goes to `fake` (unit tests on a paused clock).
    #[cfg(test)]
    pub fn faked(fake: FakeHomeserver) -> Self {
        let mut c = Self::with_tls("http://fake.invalid", None, false)
            .expect("a client without TLS settings builds");
        c.fake = Some(fake);
        c
    }

    /// This client, counting its requests (and carrying `metrics` to its users).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// What the sync loop tells about rooms' members and join rules.
    pub fn room_facts(&self) -> &super::room_facts::RoomFacts {
        &self.facts
    }

    /// The metrics handle (off unless [`with_metrics`](Self::with_metrics) set one).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Turns on encryption for rooms that ask for it (once; later calls are ignored).
    pub fn set_crypto(&self, crypto: super::crypto::Crypto) {
        let _ = self.crypto.set(crypto);
    }

    /// The encryption state, when encryption is on.
    pub fn crypto(&self) -> Option<&super::crypto::Crypto> {
        self.crypto.get()
    }

    /// Replaces the access token (after a re-login).
    pub fn set_token(&self, token: Secret) {
        if let Ok(mut t) = self.token.write() {
            *t = token;
        }
    }

    fn token(&self) -> String {
        self.token
            .read()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default()
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, MatrixError> {
        let res = self.request(method, path, query, body, timeout).await;
        self.metrics.matrix_api(path, res.is_ok());
        res
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, MatrixError> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return fake(method, path.to_owned(), body.cloned()).await;
        }
        let url = format!("{}/_matrix/client/v3{}", self.base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .query(query)
            .timeout(timeout);
        let token = self.token();
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        // The URL has no secrets (the token goes in a header); the path is safe to log.
        debug!(%method, %path, "matrix request");
        let network = |e: reqwest::Error| MatrixError::Network {
            homeserver: self.base.clone(),
            source: e.without_url(),
        };
        let resp = req.send().await.map_err(network)?;
        let status = resp.status();
        let header_retry = retry_after_header(&resp);
        let bytes = resp.bytes().await.map_err(network)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| MatrixError::Decode(e.to_string()));
        }
        Err(api_error(status, header_retry, &bytes))
    }

    /// Sends one of ruma's typed requests (the key requests of the encryption state machine)
    /// and parses the typed response; errors are classified as for every other call.
    pub(super) async fn ruma<R>(&self, req: R) -> Result<R::IncomingResponse, MatrixError>
    where
        R: ruma::api::OutgoingRequest<
            Authentication = ruma::api::auth_scheme::AccessToken,
            PathBuilder = ruma::api::path_builder::VersionHistory,
        >,
    {
        use ruma::api::IncomingResponse;
        let versions =
            ruma::api::SupportedVersions::from_parts(&["v1.11".to_owned()], &Default::default());
        let token = self.token();
        let path = R::PATH_BUILDER
            .stable_paths()
            .last()
            .map_or("", |(_, p)| p.trim_start_matches("/_matrix/client/v3"));
        let req: http::Request<Vec<u8>> = req
            .try_into_http_request(
                &self.base,
                ruma::api::auth_scheme::SendAccessToken::Always(&token),
                std::borrow::Cow::Owned(versions),
            )
            .map_err(|e| MatrixError::Decode(format!("cannot build {path}: {e}")))?;
        let res = self.send_http(req).await;
        self.metrics.matrix_api(path, res.is_ok());
        let (status, body) = res?;
        let resp = http::Response::builder()
            .status(status)
            .body(body)
            .map_err(|e| MatrixError::Decode(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(resp)
            .map_err(|e| MatrixError::Decode(format!("{path}: {e}")))
    }

    async fn send_http(&self, req: http::Request<Vec<u8>>) -> Result<(u16, Vec<u8>), MatrixError> {
        let (parts, body) = req.into_parts();
        let url = parts.uri.to_string();
        debug!(method = %parts.method, path = %parts.uri.path(), "matrix request");
        let network = |e: reqwest::Error| MatrixError::Network {
            homeserver: self.base.clone(),
            source: e.without_url(),
        };
        let resp = self
            .http
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body)
            .timeout(Self::SHORT)
            .send()
            .await
            .map_err(network)?;
        let status = resp.status();
        let header_retry = retry_after_header(&resp);
        let bytes = resp.bytes().await.map_err(network)?;
        if status.is_success() {
            return Ok((status.as_u16(), bytes.to_vec()));
        }
        Err(api_error(status, header_retry, &bytes))
    }
}

fn retry_after_header(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A homeserver error response, classified.
fn api_error(status: StatusCode, header_retry: Option<Duration>, bytes: &[u8]) -> MatrixError {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    MatrixError::Api {
        status: status.as_u16(),
        errcode: v
            .get("errcode")
            .and_then(Value::as_str)
            .unwrap_or(if status == StatusCode::TOO_MANY_REQUESTS {
                "M_LIMIT_EXCEEDED"
            } else {
                "M_UNKNOWN"
            })
            .to_owned(),
        message: v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(300)
            .collect(),
        retry_after: v
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .or(header_retry),
    }
}

impl MatrixClient {
    pub(super) const SHORT: Duration = Duration::from_secs(30);

    /// Password login, reusing `device_id` when we have one so the device list stays tidy.
    pub async fn login_password(
        &self,
        user_id: &str,
        password: &Secret,
        device_id: Option<&str>,
        device_name: &str,
    ) -> Result<Session, MatrixError> {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password.expose(),
            "initial_device_display_name": device_name,
        });
        if let Some(d) = device_id {
            body["device_id"] = json!(d);
        }
        let v = self
            .call(Method::POST, "/login", &[], Some(&body), Self::SHORT)
            .await?;
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| MatrixError::Decode(format!("login response without {k}")))
        };
        Ok(Session {
            homeserver: self.base.clone(),
            user_id: get("user_id")?,
            device_id: get("device_id")?,
            access_token: get("access_token")?,
        })
    }

    /// `POST /logout`: ends this token's session and deletes its device (with its keys).
    pub async fn logout(&self) -> Result<(), MatrixError> {
        self.call(Method::POST, "/logout", &[], Some(&json!({})), Self::SHORT)
            .await
            .map(|_| ())
    }

    /// `GET /account/whoami`: (user_id, device_id).
    pub async fn whoami(&self) -> Result<(String, Option<String>), MatrixError> {
        let v = self
            .call(Method::GET, "/account/whoami", &[], None, Self::SHORT)
            .await?;
        let user = v
            .get("user_id")
            .and_then(Value::as_str)
            .ok_or_else(|| MatrixError::Decode("whoami without user_id".into()))?;
        Ok((
            user.to_owned(),
            v.get("device_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ))
    }

    /// One `/sync` long poll.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout: Duration,
        filter: &str,
    ) -> Result<super::sync::SyncResponse, MatrixError> {
        let mut q = vec![
            ("timeout", timeout.as_millis().to_string()),
            ("filter", filter.to_owned()),
        ];
        if let Some(s) = since {
            q.push(("since", s.to_owned()));
        }
        let v = self
            .call(
                Method::GET,
                "/sync",
                &q,
                None,
                timeout + Duration::from_secs(30),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| MatrixError::Decode(e.to_string()))
    }

    /// Joins a room we were invited to.
    pub async fn join(&self, room_id: &str) -> Result<(), MatrixError> {
        self.call(
            Method::POST,
            &format!("/rooms/{}/join", seg(room_id)),
            &[],
            Some(&json!({})),
            Self::SHORT,
        )
        .await
        .map(|_| ())
    }

    /// Leaves (or declines an invite to) a room, with a reason the inviter sees.
    pub async fn leave(&self, room_id: &str, reason: &str) -> Result<(), MatrixError> {
        self.call(
            Method::POST,
            &format!("/rooms/{}/leave", seg(room_id)),
            &[],
            Some(&json!({"reason": reason})),
            Self::SHORT,
        )
        .await
        .map(|_| ())
    }

    /// Resolves `#alias:server` to a room id.
    pub async fn resolve_alias(&self, alias: &str) -> Result<String, MatrixError> {
        let v = self
            .call(
                Method::GET,
                &format!("/directory/room/{}", seg(alias)),
                &[],
                None,
                Self::SHORT,
            )
            .await?;
        v.get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Decode("alias response without room_id".into()))
    }

    /// The room's join rule (`public`, `invite` ...), if it has one. Asked once per room; the
    /// sync keeps it current after that.
    pub async fn join_rule(&self, room_id: &str) -> Result<Option<String>, MatrixError> {
        if let Some(rule) = self.facts.join_rule(room_id) {
            return Ok(rule);
        }
        let generation = self.facts.generation(room_id);
        let rule = self.ask_join_rule(room_id).await?;
        self.facts
            .learn_join_rule(room_id, generation, rule.clone());
        Ok(rule)
    }

    async fn ask_join_rule(&self, room_id: &str) -> Result<Option<String>, MatrixError> {
        match self
            .call(
                Method::GET,
                &format!("/rooms/{}/state/m.room.join_rules/", seg(room_id)),
                &[],
                None,
                Self::SHORT,
            )
            .await
        {
            Ok(v) => Ok(v
                .get("join_rule")
                .and_then(Value::as_str)
                .map(str::to_owned)),
            Err(MatrixError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The room's `m.room.encryption` content, `None` for an unencrypted room.
    pub async fn room_encryption(&self, room_id: &str) -> Result<Option<Value>, MatrixError> {
        match self
            .call(
                Method::GET,
                &format!("/rooms/{}/state/m.room.encryption/", seg(room_id)),
                &[],
                None,
                Self::SHORT,
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(MatrixError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Joined members with their display names. Asked once per room; the sync keeps them
    /// current after that, or makes the next call ask again (see [`super::room_facts`]).
    pub async fn joined_members(
        &self,
        room_id: &str,
    ) -> Result<HashMap<String, MemberInfo>, MatrixError> {
        if let Some(members) = self.facts.members(room_id) {
            return Ok(members);
        }
        let generation = self.facts.generation(room_id);
        let members = self.ask_joined_members(room_id).await?;
        self.facts.learn_members(room_id, generation, &members);
        Ok(members)
    }

    async fn ask_joined_members(
        &self,
        room_id: &str,
    ) -> Result<HashMap<String, MemberInfo>, MatrixError> {
        let v = self
            .call(
                Method::GET,
                &format!("/rooms/{}/joined_members", seg(room_id)),
                &[],
                None,
                Self::SHORT,
            )
            .await?;
        serde_json::from_value::<JoinedMembers>(v)
            .map(|m| m.joined)
            .map_err(|e| MatrixError::Decode(e.to_string()))
    }

    /// Sends one event with a caller-chosen transaction id, so a retry is idempotent.
    pub async fn send(
        &self,
        room_id: &str,
        event_type: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<String, MatrixError> {
        let v = self
            .call(
                Method::PUT,
                &format!(
                    "/rooms/{}/send/{}/{}",
                    seg(room_id),
                    seg(event_type),
                    seg(txn_id)
                ),
                &[],
                Some(content),
                Self::SHORT,
            )
            .await?;
        Ok(v.get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Posts an `m.notice` (reliably, for up to 30 s).
    pub async fn notice(&self, room_id: &str, text: &str) -> Result<String, MatrixError> {
        self.send_reliably(
            room_id,
            "m.room.message",
            &notice_content(text),
            Duration::from_secs(30),
        )
        .await
    }

    /// [`send`](Self::send) retried with backoff on transient errors until `deadline`, always
    /// with the same transaction id, so the event is delivered at most once.
    pub async fn send_reliably(
        &self,
        room_id: &str,
        event_type: &str,
        content: &Value,
        give_up_after: Duration,
    ) -> Result<String, MatrixError> {
        let txn = format!("vb{}", uuid::Uuid::new_v4().simple());
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        // Encrypted once, before the first try: every retry then carries the same ciphertext
        // under the same transaction id.
        let mut sealed: Option<Value> = None;
        loop {
            let attempt = match &sealed {
                Some(c) => self.send(room_id, "m.room.encrypted", &txn, c).await,
                None => match self.seal(room_id, event_type, content).await {
                    Ok(Some(c)) => {
                        let r = self.send(room_id, "m.room.encrypted", &txn, &c).await;
                        sealed = Some(c);
                        r
                    }
                    Ok(None) => self.send(room_id, event_type, &txn, content).await,
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(id) => return Ok(id),
                Err(e) if e.is_transient() && start.elapsed() < give_up_after => {
                    let ours = backoff.next_wait();
                    let wait = e.retry_after().unwrap_or(ours);
                    warn!(%event_type, error = %Chain(&e), retry_in = ?wait, "sending event failed; retrying with the same transaction id");
                    self.metrics.send_retry();
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl MatrixClient {
    /// The encrypted content for an encrypted room, `None` where events go out plain.
    async fn seal(
        &self,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<Option<Value>, MatrixError> {
        let Some(crypto) = self.crypto() else {
            return Ok(None);
        };
        if !crypto.is_encrypted(self, room_id).await? {
            return Ok(None);
        }
        crypto
            .encrypt(self, room_id, event_type, content)
            .await
            .map(Some)
    }
}

/// `m.room.message` content of a notice.
pub fn notice_content(text: &str) -> Value {
    json!({"msgtype": "m.notice", "body": text})
}

/// `m.reaction` content annotating `event_id` with `key`.
pub fn reaction_content(event_id: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let api = |status, errcode: &str| MatrixError::Api {
            status,
            errcode: errcode.into(),
            message: String::new(),
            retry_after: None,
        };
        assert!(api(502, "M_UNKNOWN").is_transient());
        assert!(api(429, "M_LIMIT_EXCEEDED").is_transient());
        assert!(!api(403, "M_FORBIDDEN").is_transient());
        assert!(api(401, "M_UNKNOWN_TOKEN").is_unknown_token());
        assert!(!api(403, "M_FORBIDDEN").is_unknown_token());
    }

    /// A local port nothing listens on: connecting to it is refused at once.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local address").port()
    }

    #[tokio::test]
    async fn unreachable_homeserver_names_the_address_and_the_cause() {
        let homeserver = format!("http://127.0.0.1:{}", closed_port());
        let client = MatrixClient::with_tls(&homeserver, None, false).expect("client");
        let e = client.whoami().await.expect_err("nothing listens there");
        assert!(e.is_transient(), "{e:?}");
        let line = crate::chain::Chain(&e).to_string();
        assert!(
            line.starts_with(&format!("cannot reach homeserver {homeserver}: "))
                && line.to_lowercase().contains("refused"),
            "{line}"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(seg("m.call.invite"), "m.call.invite");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
