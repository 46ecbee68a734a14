//! JSON-RPC 2.0 framing as mod_verto speaks it.
//!
//! FreeSWITCH numbers its own requests from one server-wide counter, so its ids can equal
//! ours: a frame is classified by its members (`method` means request, `result`/`error` means
//! response), never by its id. Frames are parsed into `serde_json::Value` first because
//! FreeSWITCH's error objects can carry two `message` keys (PROTOCOL.md B.2), which derived
//! structs would reject.

use serde_json::{json, Map, Value};

/// An error object from FreeSWITCH.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// `code`, absent in some replies (e.g. a refused `verto.subscribe`).
    pub code: Option<i64>,
    /// `message` (the last one if FreeSWITCH sent two).
    pub message: String,
    /// The whole error object, for fields such as `cause`/`causeCode`.
    pub data: Value,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "{} ({c})", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// One classified inbound frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A server request: it must be answered with the same id.
    Request {
        /// Echoed in our reply (any JSON value).
        id: Value,
        /// `verto.answer`, `verto.bye`, ...
        method: String,
        /// The params object (`{}` if absent or not an object).
        params: Value,
    },
    /// A request without id: nothing to answer.
    Notification {
        /// The method.
        method: String,
        /// The params.
        params: Value,
    },
    /// A reply to one of our requests.
    Response {
        /// Our numeric id, or `None` when FreeSWITCH replied with `null` or a foreign id
        /// (e.g. its answer to unparsable input).
        id: Option<u64>,
        /// `result` or `error`.
        outcome: Result<Value, RpcError>,
    },
}

/// Why a frame could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON.
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    /// JSON, but neither request nor response.
    #[error("frame is neither a request nor a response")]
    Unclassifiable,
}

/// Parses one WebSocket text frame. A JSON array (a batch) yields one entry per element.
pub fn parse_frame(text: &str) -> Vec<Result<Incoming, FrameError>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items.into_iter().map(classify).collect(),
        Ok(v) => vec![classify(v)],
        Err(e) => vec![Err(FrameError::NotJson(e.to_string()))],
    }
}

fn classify(v: Value) -> Result<Incoming, FrameError> {
    let Value::Object(mut obj) = v else {
        return Err(FrameError::Unclassifiable);
    };
    if let Some(Value::String(method)) = obj.get("method").cloned() {
        let params = match obj.remove("params") {
            Some(p @ Value::Object(_)) => p,
            _ => Value::Object(Map::new()),
        };
        return Ok(match obj.remove("id") {
            Some(Value::Null) | None => Incoming::Notification { method, params },
            Some(id) => Incoming::Request { id, method, params },
        });
    }
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(result) = obj.remove("result") {
        return Ok(Incoming::Response {
            id,
            outcome: Ok(result),
        });
    }
    if let Some(error) = obj.remove("error") {
        let code = error.get("code").and_then(Value::as_i64);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)")
            .to_owned();
        return Ok(Incoming::Response {
            id,
            outcome: Err(RpcError {
                code,
                message,
                data: error,
            }),
        });
    }
    Err(FrameError::Unclassifiable)
}

/// Our request frame.
pub fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
}

/// The reply verto.js sends to every server request; FreeSWITCH ignores its content.
pub fn ack(id: &Value, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": {"method": method}})
}

/// A copy of a frame that is safe to log: `passwd` and `password` are masked.
pub fn redacted(frame: &Value) -> Value {
    let mut v = frame.clone();
    if let Some(Value::Object(p)) = v.get_mut("params") {
        for key in ["passwd", "password"] {
            if let Some(x) = p.get_mut(key) {
                *x = Value::String("***".into());
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Incoming, FrameError> {
        let mut v = parse_frame(text);
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn server_request_with_colliding_id_is_a_request() {
        let f = r#"{"jsonrpc":"2.0","id":1,"method":"verto.clientReady","params":{"reattached_sessions":[]}}"#;
        match one(f).unwrap() {
            Incoming::Request { id, method, .. } => {
                assert_eq!(id, json!(1));
                assert_eq!(method, "verto.clientReady");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_and_errors() {
        let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"message":"logged in","sessid":"x"}}"#;
        assert!(matches!(
            one(ok).unwrap(),
            Incoming::Response {
                id: Some(1),
                outcome: Ok(_)
            }
        ));
        let err = r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"Authentication Required"}}"#;
        match one(err).unwrap() {
            Incoming::Response {
                id: Some(2),
                outcome: Err(e),
            } => {
                assert_eq!(e.code, Some(-32000));
                assert_eq!(e.message, "Authentication Required");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_message_keys_are_survived() {
        let f = r#"{"jsonrpc":"2.0","id":3,"error":{"message":"SDP missing","code":-32002,"message":"CALL ERROR","causeCode":88}}"#;
        match one(f).unwrap() {
            Incoming::Response {
                outcome: Err(e), ..
            } => {
                assert_eq!(e.message, "CALL ERROR");
                assert_eq!(e.data["causeCode"], 88);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn odd_frames() {
        assert!(matches!(one("hello"), Err(FrameError::NotJson(_))));
        assert_eq!(one("42"), Err(FrameError::Unclassifiable));
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":4}"#),
            Err(FrameError::Unclassifiable)
        );
        // FreeSWITCH's answer to a WebSocket ping frame.
        let f = r#"{"error":{"code":-32600,"message":"Invalid Request"},"id":null}"#;
        assert!(matches!(
            one(f).unwrap(),
            Incoming::Response {
                id: None,
                outcome: Err(_)
            }
        ));
        // An error without code or message.
        let f = r#"{"jsonrpc":"2.0","id":5,"error":{"unauthorizedChannels":["FSevent.dtmf"]}}"#;
        assert!(matches!(
            one(f).unwrap(),
            Incoming::Response {
                id: Some(5),
                outcome: Err(RpcError { code: None, .. })
            }
        ));
        assert_eq!(
            parse_frame(r#"[{"jsonrpc":"2.0","id":1,"result":{}}, 7]"#).len(),
            2
        );
        let n = one(r#"{"jsonrpc":"2.0","method":"verto.event","params":[1]}"#).unwrap();
        assert!(matches!(n, Incoming::Notification { ref params, .. } if params.is_object()));
    }

    #[test]
    fn every_line_of_the_real_captures_classifies() {
        let files = [
            include_str!("../../tests/fixtures/verto/login_ok.jsonl"),
            include_str!("../../tests/fixtures/verto/invite_echo_9196.jsonl"),
            include_str!("../../tests/fixtures/verto/early_media_7000.jsonl"),
            include_str!("../../tests/fixtures/verto/busy_4860.jsonl"),
            include_str!("../../tests/fixtures/verto/malformed_json.jsonl"),
            include_str!("../../tests/fixtures/verto/unknown_method.jsonl"),
            include_str!("../../tests/fixtures/verto/ping.jsonl"),
        ];
        let mut n = 0;
        for line in files.iter().flat_map(|f| f.lines()) {
            let rec: Value = serde_json::from_str(line).unwrap();
            if rec["dir"] != "recv" {
                continue;
            }
            let text = rec["msg"].to_string();
            for r in parse_frame(&text) {
                r.unwrap_or_else(|e| panic!("{text}: {e}"));
                n += 1;
            }
        }
        assert!(n > 20, "{n}");
    }

    #[test]
    fn redaction_masks_passwords() {
        let f = request(1, "login", json!({"login":"1000@x","passwd":"1234"}));
        let r = redacted(&f).to_string();
        assert!(!r.contains("1234") && r.contains("1000@x"));
    }
}
