//! A plain HTTP/1.1 proxy in front of the test Synapse that can lose one response.
//!
//! One request per connection: every forwarded request and every response carries
//! `Connection: close`, so the upstream reply ends at end of stream and the client opens a new
//! connection for its next request. Every request is recorded. The first request that matches
//! the test's predicate is forwarded and fully processed by Synapse, but the client connection
//! is then closed without a reply: the client sees a network error after the server acted.
//! Or, started with [`HttpProxy::deferring`], requests that match are answered `200 {}` at
//! once and reach Synapse only later: a homeserver (or federation) that delivers them late.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The upstream status code (0 if the upstream reply could not be read).
    pub status: u16,
    /// The upstream response body (as the upstream framed it).
    pub body: String,
    /// The reply was withheld from the client.
    pub dropped: bool,
}

type Pred = dyn Fn(&str, &str) -> bool + Send + Sync;

struct State {
    log: Vec<Forwarded>,
    dropped_one: bool,
}

/// What the proxy does to the requests that match `defer`.
#[derive(Clone)]
struct Rules {
    drop_reply: Arc<Pred>,
    defer: Arc<Pred>,
    by: std::time::Duration,
}

/// The running proxy; stops when dropped.
pub struct HttpProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpProxy {
    /// Proxies to `upstream` (`http://host:port`); the first request for which
    /// `drop_reply(method, path)` holds is processed upstream but gets no reply.
    pub async fn start(
        upstream: &str,
        drop_reply: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::with_rules(
            upstream,
            Rules {
                drop_reply: Arc::new(drop_reply),
                defer: Arc::new(|_, _| false),
                by: std::time::Duration::ZERO,
            },
        )
        .await
    }

    /// Proxies to `upstream`; every request for which `defer(method, path)` holds is
    /// answered `200 {}` at once and forwarded `by` later.
    pub async fn deferring(
        upstream: &str,
        defer: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
        by: std::time::Duration,
    ) -> Self {
        Self::with_rules(
            upstream,
            Rules {
                drop_reply: Arc::new(|_, _| false),
                defer: Arc::new(defer),
                by,
            },
        )
        .await
    }

    async fn with_rules(upstream: &str, rules: Rules) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            log: Vec::new(),
            dropped_one: false,
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (st, rules, up) = (st.clone(), rules.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = handle(client, &up, &st, &rules).await;
                });
            }
        });
        HttpProxy { url, state, task }
    }

    /// Every request forwarded so far, in arrival order.
    pub fn requests(&self) -> Vec<Forwarded> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 message head (up to and including the blank line) and, with a
/// `Content-Length`, its body. Returns (head lines, body); `None` at end of stream.
async fn read_message(s: &mut TcpStream) -> std::io::Result<Option<(Vec<String>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head: Vec<String> = String::from_utf8_lossy(&buf[..end])
        .split("\r\n")
        .map(str::to_owned)
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let len = head
        .iter()
        .filter_map(|h| h.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        !head
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("transfer-encoding:")),
        "the test proxy handles Content-Length request bodies only: {head:?}"
    );
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

/// The head with `Connection`/`Keep-Alive` replaced by `Connection: close`.
fn close_head(head: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for (i, h) in head.iter().enumerate() {
        let name = h.split(':').next().unwrap_or("").trim();
        if i > 0
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"))
        {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    rules: &Rules,
) -> std::io::Result<()> {
    let Some((head, body)) = read_message(&mut client).await? else {
        return Ok(());
    };
    let mut parts = head[0].split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let dropped = {
        let mut st = state.lock().unwrap();
        let d = !st.dropped_one && (rules.drop_reply)(&method, &path);
        st.dropped_one |= d;
        d
    };
    if (rules.defer)(&method, &path) {
        client
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .await?;
        client.shutdown().await?;
        tokio::time::sleep(rules.by).await;
        let (_, rbody, status) = exchange(upstream, &head, &body).await?;
        log(state, method, path, status, &rbody, false);
        return Ok(());
    }
    let (rhead, rbody, status) = exchange(upstream, &head, &body).await?;
    log(state, method, path, status, &rbody, dropped);
    if dropped || rhead.is_empty() {
        // Lost on the way back: close without a byte of reply.
        return client.shutdown().await;
    }
    client.write_all(&close_head(&rhead)).await?;
    client.write_all(&rbody).await?;
    client.shutdown().await
}

fn log(
    state: &Mutex<State>,
    method: String,
    path: String,
    status: u16,
    body: &[u8],
    dropped: bool,
) {
    state.lock().unwrap().log.push(Forwarded {
        method,
        path,
        status,
        body: String::from_utf8_lossy(body).into_owned(),
        dropped,
    });
}

/// Sends one request upstream and reads the whole reply: (head lines, body, status).
async fn exchange(
    upstream: &str,
    head: &[String],
    body: &[u8],
) -> std::io::Result<(Vec<String>, Vec<u8>, u16)> {
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&close_head(head)).await?;
    up.write_all(body).await?;
    // Synapse closes after its reply (the request said `Connection: close`): the whole
    // response, so by now the request has been processed.
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n");
    let (rhead, rbody): (Vec<String>, Vec<u8>) = match split {
        Some(p) => (
            String::from_utf8_lossy(&resp[..p])
                .split("\r\n")
                .map(str::to_owned)
                .collect(),
            resp[p + 4..].to_vec(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let status = rhead
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((rhead, rbody, status))
}
