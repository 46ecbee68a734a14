//! Where a call goes and how the caller is presented: routes, `*` globs, caller id templates.
//!
//! Everything here is pure; alias resolution happens before [`select`] is called, so the
//! matching can be table-tested.

use std::collections::HashMap;
use std::time::Duration;

use crate::chain::Chain;
use crate::config::{CallsConfig, RouteConfig};
use crate::matrix::client::MemberInfo;
use crate::matrix::server_name;

/// The outcome of routing one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The route's label, for logs.
    pub name: String,
    /// `destination_number`.
    pub destination: String,
    /// Caller id name, rendered and sanitised.
    pub caller_id_name: String,
    /// Caller id number, rendered and sanitised.
    pub caller_id_number: String,
    /// Digits to send after the answer, with their delay.
    pub digits_on_answer: Option<(String, Duration)>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// `@local:server`.
    pub user_id: &'a str,
    /// The room member display name (may be empty).
    pub display_name: &'a str,
}

impl Caller<'_> {
    fn localpart(&self) -> &str {
        self.user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or_default()
    }
    fn server(&self) -> &str {
        server_name(self.user_id)
    }
}

/// `*` matches any run of characters (including none); everything else literally,
/// ASCII case-insensitively (server names are case-insensitive).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_lowercase().chars().collect(),
        text.to_ascii_lowercase().chars().collect(),
    );
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A user pattern: starting with `@`, a glob over the whole user id; otherwise a glob over
/// the user's server name.
pub fn user_matches(pattern: &str, user_id: &str) -> bool {
    if pattern.starts_with('@') {
        glob_match(pattern, user_id)
    } else {
        glob_match(pattern, server_name(user_id))
    }
}

/// A 1:1 room, the only kind the bot takes calls and `!dial` in: exactly `user` and the bot are
/// joined (README, "How a call goes"). Element offers a legacy call only in such a room, and
/// anyone else joined could watch or answer the signalling.
pub fn is_one_to_one(members: &HashMap<String, MemberInfo>, user: &str, bot: &str) -> bool {
    members.len() == 2 && members.contains_key(user) && members.contains_key(bot)
}

/// Whether `user_id` may use the bridge. An empty list means: users of `own_server`.
pub fn allowed(allow: &[String], own_server: &str, user_id: &str) -> bool {
    if allow.is_empty() {
        return user_matches(own_server, user_id);
    }
    allow.iter().any(|p| user_matches(p, user_id))
}

/// Renders a caller id template.
pub fn render(template: &str, caller: &Caller<'_>) -> String {
    let display = if caller.display_name.trim().is_empty() {
        caller.localpart()
    } else {
        caller.display_name
    };
    template
        .replace("{display_name}", display)
        .replace("{localpart}", caller.localpart())
        .replace("{user_id}", caller.user_id)
        .replace("{server}", caller.server())
}

/// Keeps what a SIP user part and a phone display accept.
pub fn sip_number(s: &str) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(*c))
        .take(32)
        .collect();
    if out.is_empty() {
        "matrix".into()
    } else {
        out
    }
}

/// A display name without quotes, backslashes or control characters, at most 48 characters.
pub fn sip_display_name(s: &str) -> String {
    let out: String = s
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '<' | '>'))
        .take(48)
        .collect::<String>()
        .trim()
        .to_owned();
    if out.is_empty() {
        "Matrix".into()
    } else {
        out
    }
}

/// Picks the first matching route. `aliases` maps the routes' `#alias:server` to room ids
/// (unresolved aliases never match). `dial_override` (from `!dial`) replaces the destination
/// and drops the route's digits, which belong to the route's own destination.
pub fn select(
    calls: &CallsConfig,
    routes: &[RouteConfig],
    aliases: &HashMap<String, String>,
    room_id: &str,
    caller: &Caller<'_>,
    dial_override: Option<&str>,
) -> Routed {
    let hit = routes.iter().enumerate().find(|(_, r)| {
        let room_ok = match r.room.as_deref() {
            None => true,
            Some(alias) if alias.starts_with('#') => {
                aliases.get(alias).is_some_and(|id| id == room_id)
            }
            Some(id) => id == room_id,
        };
        let user_ok = r
            .user
            .as_deref()
            .is_none_or(|p| user_matches(p, caller.user_id));
        room_ok && user_ok
    });
    let (name, destination, cid_name, cid_number, digits, delay) = match hit {
        Some((i, r)) => (
            r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
            r.destination.clone(),
            r.caller_id_name.as_deref().unwrap_or(&calls.caller_id_name),
            r.caller_id_number
                .as_deref()
                .unwrap_or(&calls.caller_id_number),
            r.digits_on_answer
                .as_deref()
                .unwrap_or(&calls.digits_on_answer),
            r.digits_delay_ms.unwrap_or(calls.digits_delay_ms),
        ),
        None => (
            "default".to_owned(),
            calls.destination.clone(),
            calls.caller_id_name.as_str(),
            calls.caller_id_number.as_str(),
            calls.digits_on_answer.as_str(),
            calls.digits_delay_ms,
        ),
    };
    let (name, destination, digits) = match dial_override {
        Some(d) => (format!("{name} (!dial)"), d.to_owned(), ""),
        None => (name, destination, digits),
    };
    Routed {
        name,
        destination,
        caller_id_name: sip_display_name(&render(cid_name, caller)),
        caller_id_number: sip_number(&render(cid_number, caller)),
        digits_on_answer: (!digits.is_empty())
            .then(|| (digits.to_owned(), Duration::from_millis(delay))),
    }
}

/// [`select`] with the routes' room aliases resolved through the homeserver (cached).
pub struct Router {
    calls: CallsConfig,
    routes: Vec<RouteConfig>,
    matrix: crate::matrix::MatrixClient,
    cache: std::sync::Mutex<HashMap<String, (Option<String>, tokio::time::Instant)>>,
}

impl Router {
    /// A router over the configured routes.
    pub fn new(
        calls: CallsConfig,
        routes: Vec<RouteConfig>,
        matrix: crate::matrix::MatrixClient,
    ) -> Self {
        Self {
            calls,
            routes,
            matrix,
            cache: Default::default(),
        }
    }

    /// Routes one call.
    pub async fn route(
        &self,
        room_id: &str,
        caller: &Caller<'_>,
        dial_override: Option<&str>,
    ) -> Routed {
        let mut aliases = HashMap::new();
        for alias in self
            .routes
            .iter()
            .filter_map(|r| r.room.as_deref())
            .filter(|r| r.starts_with('#'))
        {
            if let Some(id) = self.resolve(alias).await {
                aliases.insert(alias.to_owned(), id);
            }
        }
        select(
            &self.calls,
            &self.routes,
            &aliases,
            room_id,
            caller,
            dial_override,
        )
    }

    async fn resolve(&self, alias: &str) -> Option<String> {
        let now = tokio::time::Instant::now();
        if let Ok(cache) = self.cache.lock() {
            if let Some((id, until)) = cache.get(alias) {
                if *until > now {
                    return id.clone();
                }
            }
        }
        let (id, ttl) = match self.matrix.resolve_alias(alias).await {
            Ok(id) => (Some(id), Duration::from_secs(600)),
            Err(e) => {
                tracing::warn!(%alias, error = %Chain(&e), "cannot resolve a route's room alias; the route is skipped");
                (None, Duration::from_secs(60))
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(alias.to_owned(), (id.clone(), now + ttl));
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_one_means_exactly_the_user_and_the_bot() {
        let room = |ids: &[&str]| -> HashMap<String, MemberInfo> {
            ids.iter()
                .map(|u| ((*u).to_owned(), MemberInfo { display_name: None }))
                .collect()
        };
        let (alice, bot) = ("@alice:a.org", "@bot:b.org");
        assert!(is_one_to_one(&room(&[alice, bot]), alice, bot));
        assert!(!is_one_to_one(
            &room(&[alice, bot, "@eve:c.org"]),
            alice,
            bot
        ));
        assert!(!is_one_to_one(&room(&[alice, "@eve:c.org"]), alice, bot));
        assert!(!is_one_to_one(&room(&[bot, "@eve:c.org"]), alice, bot));
        assert_eq!(server_name("@alice:example.org:8448"), "example.org:8448");
        assert_eq!(server_name("alice"), "");
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("*", "anything", true),
            ("example.org", "example.org", true),
            ("example.org", "Example.ORG", true),
            ("example.org", "evil-example.org", false),
            ("*.example.org", "a.example.org", true),
            ("*.example.org", "example.org", false),
            ("@*:example.org", "@alice:example.org", true),
            ("@*:example.org", "@alice:example.org.evil", false),
            ("@al*e:*", "@alice:x", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn users_and_access() {
        assert!(user_matches("example.org", "@bob:example.org"));
        assert!(!user_matches("example.org", "@bob:other.org"));
        assert!(user_matches("@bob:example.org", "@bob:example.org"));
        assert!(!user_matches("@bob:example.org", "@bobby:example.org"));
        assert!(allowed(&[], "example.org", "@a:example.org"));
        assert!(!allowed(&[], "example.org", "@a:other.org"));
        let list = vec!["@friend:other.org".to_owned(), "*.corp".to_owned()];
        assert!(allowed(&list, "example.org", "@friend:other.org"));
        assert!(allowed(&list, "example.org", "@x:hq.corp"));
        assert!(
            !allowed(&list, "example.org", "@a:example.org"),
            "a list replaces the default"
        );
    }

    #[test]
    fn templates() {
        let c = Caller {
            user_id: "@alice:example.org",
            display_name: "Alice \"A\" Smith",
        };
        assert_eq!(
            render("{display_name} via Matrix", &c),
            "Alice \"A\" Smith via Matrix"
        );
        assert_eq!(
            sip_display_name(&render("{display_name}", &c)),
            "Alice A Smith"
        );
        assert_eq!(sip_number(&render("{localpart}", &c)), "alice");
        assert_eq!(
            render("{user_id}|{server}", &c),
            "@alice:example.org|example.org"
        );
        let anon = Caller {
            user_id: "@bob:x",
            display_name: " ",
        };
        assert_eq!(render("{display_name}", &anon), "bob");
        for (input, want) in [
            ("alice", "alice"),
            ("bob.smith_2", "bob.smith_2"),
            ("évé", "v"),
            ("éé", "matrix"),
            ("a b;c", "abc"),
        ] {
            assert_eq!(sip_number(input), want);
        }
        assert_eq!(sip_display_name("\u{7}"), "Matrix");
        assert_eq!(sip_display_name(&"x".repeat(100)).len(), 48);
    }

    fn route(room: Option<&str>, user: Option<&str>, dest: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            room: room.map(Into::into),
            user: user.map(Into::into),
            destination: dest.into(),
            caller_id_name: None,
            caller_id_number: Some("+49{localpart}".into()),
            digits_on_answer: Some("*5".into()),
            digits_delay_ms: Some(500),
        }
    }

    #[test]
    fn selection_table() {
        let calls = CallsConfig::default();
        let routes = vec![
            route(Some("#conf:example.org"), None, "3000"),
            route(Some("!helpdesk:example.org"), Some("example.org"), "5000"),
            route(None, Some("@vip*:*"), "7000"),
        ];
        let aliases: HashMap<String, String> = [(
            "#conf:example.org".to_owned(),
            "!conf:example.org".to_owned(),
        )]
        .into();
        let alice = Caller {
            user_id: "@alice:example.org",
            display_name: "Alice",
        };
        let guest = Caller {
            user_id: "@guest:other.org",
            display_name: "",
        };
        let vip = Caller {
            user_id: "@vip1:other.org",
            display_name: "",
        };
        let cases = [
            ("!conf:example.org", &alice, None, "3000"),
            ("!helpdesk:example.org", &alice, None, "5000"),
            ("!helpdesk:example.org", &guest, None, "3000"), // falls through to the default
            ("!helpdesk:example.org", &vip, None, "7000"),
            ("!other:example.org", &alice, None, "3000"),
            ("!conf:example.org", &alice, Some("+4930123"), "+4930123"),
        ];
        for (room, caller, dial, want) in cases {
            let r = select(&calls, &routes, &aliases, room, caller, dial);
            assert_eq!(r.destination, want, "{room} {}", caller.user_id);
        }
        let r = select(&calls, &routes, &aliases, "!conf:example.org", &alice, None);
        assert_eq!(r.caller_id_number, "+49alice");
        assert_eq!(r.caller_id_name, "Alice");
        assert_eq!(
            r.digits_on_answer,
            Some(("*5".into(), Duration::from_millis(500)))
        );
        let r = select(
            &calls,
            &routes,
            &aliases,
            "!conf:example.org",
            &alice,
            Some("123"),
        );
        assert_eq!(r.digits_on_answer, None, "!dial drops the route's digits");
        let r = select(&calls, &[], &aliases, "!x:y", &guest, None);
        assert_eq!(
            (
                r.name.as_str(),
                r.caller_id_name.as_str(),
                r.caller_id_number.as_str()
            ),
            ("default", "guest", "guest")
        );
    }
}
