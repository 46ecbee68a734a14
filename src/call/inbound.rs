//! Calls from FreeSWITCH to Matrix: which user a call rings, and how the caller is shown.
//! Pure functions, so the operator contract (README, "Calls from FreeSWITCH") is table-tested.

use super::route::glob_match;
use crate::config::InboundConfig;

/// The channel variable that names the Matrix user to ring. mod_verto passes every
/// `verto_svar_*` variable of the channel in the invite's `variables`, name unchanged.
pub const USER_VARIABLE: &str = "verto_svar_matrix_user";

/// Why a call rings this user: for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The channel variable.
    Variable,
    /// `inbound.routes[i]`.
    Route(usize),
    /// `inbound.default_user`.
    Default,
}

/// What FreeSWITCH says about a call, as far as routing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// `verto_svar_matrix_user`, if the channel has it.
    pub variable: Option<&'a str>,
    /// `caller_id_number`.
    pub caller: &'a str,
    /// `callee_id_number`.
    pub callee: &'a str,
}

/// The Matrix user to ring: the channel variable, else the first matching route, else the
/// default user; `None` refuses the call. A variable that is not a user id is not taken (the
/// routes decide), so a typo in a dialplan cannot ring an arbitrary room.
pub fn pick_user(cfg: &InboundConfig, call: Offered<'_>) -> Option<(String, Source)> {
    if let Some(v) = call.variable.map(str::trim).filter(|v| is_user_id(v)) {
        return Some((v.to_owned(), Source::Variable));
    }
    let glob = |g: &Option<String>, text: &str| g.as_deref().is_none_or(|g| glob_match(g, text));
    for (i, r) in cfg.routes.iter().enumerate() {
        if glob(&r.caller, call.caller) && glob(&r.callee, call.callee) {
            return Some((r.user.clone(), Source::Route(i)));
        }
    }
    cfg.default_user.clone().map(|u| (u, Source::Default))
}

fn is_user_id(s: &str) -> bool {
    ruma::UserId::parse(s).is_ok()
}

/// The notice posted before the call rings: "📞 Call from Alice Smith <+49 30 1234567>".
///
/// Caller ids come from the phone network and are untrusted: control characters and
/// markup-ish characters go, `@` too (a bot notice with "@room" would ping the whole room),
/// and each part is cut to a sane length.
pub fn caller_notice(name: &str, number: &str) -> String {
    let name = clean(name, 64, |c| !"<>@&\"'`*_[]|\\".contains(c));
    let number = clean(number, 32, |c| {
        c.is_ascii_alphanumeric() || " +-().#*".contains(c)
    });
    match (name.is_empty() || name == number, number.is_empty()) {
        (true, true) => "📞 Call from an unknown caller".to_owned(),
        (true, false) => format!("📞 Call from {number}"),
        (false, true) => format!("📞 Call from {name}"),
        (false, false) => format!("📞 Call from {name} <{number}>"),
    }
}

fn clean(s: &str, max: usize, keep: impl Fn(char) -> bool) -> String {
    let kept: String = s
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control() && keep(*c))
        .collect();
    kept.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InboundRoute;

    fn cfg(default: Option<&str>) -> InboundConfig {
        let route = |caller: Option<&str>, callee: Option<&str>, user: &str| InboundRoute {
            caller: caller.map(str::to_owned),
            callee: callee.map(str::to_owned),
            user: user.to_owned(),
        };
        InboundConfig {
            routes: vec![
                route(Some("+4930*"), None, "@berlin:x.org"),
                route(None, Some("200"), "@desk:x.org"),
                route(Some("1*"), Some("3*"), "@both:x.org"),
            ],
            default_user: default.map(str::to_owned),
            ring_timeout_secs: 45,
        }
    }

    /// (variable, caller, callee, default_user, expected).
    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<(&'a str, Source)>,
    );

    #[test]
    fn pick_user_table() {
        use Source::*;
        let cases: &[Case] = &[
            (
                Some("@a:x.org"),
                "+49301",
                "200",
                None,
                Some(("@a:x.org", Variable)),
            ),
            (
                Some(" @a:x.org "),
                "",
                "",
                None,
                Some(("@a:x.org", Variable)),
            ),
            (
                Some("alice"),
                "+49301",
                "",
                None,
                Some(("@berlin:x.org", Route(0))),
            ),
            (Some(""), "", "200", None, Some(("@desk:x.org", Route(1)))),
            (
                None,
                "+4930",
                "200",
                None,
                Some(("@berlin:x.org", Route(0))),
            ),
            (None, "123", "300", None, Some(("@both:x.org", Route(2)))),
            (None, "123", "400", None, None),
            (
                None,
                "123",
                "400",
                Some("@d:x.org"),
                Some(("@d:x.org", Default)),
            ),
            (None, "", "", Some("@d:x.org"), Some(("@d:x.org", Default))),
        ];
        for (var, caller, callee, default, want) in cases {
            let call = Offered {
                variable: *var,
                caller,
                callee,
            };
            let got = pick_user(&cfg(*default), call);
            let want = want.map(|(u, s)| (u.to_owned(), s));
            assert_eq!(got, want, "{var:?} {caller} {callee} {default:?}");
        }
    }

    #[test]
    fn caller_notice_table() {
        for (name, number, want) in [
            (
                "Alice Smith",
                "+49 30 1234567",
                "📞 Call from Alice Smith <+49 30 1234567>",
            ),
            ("", "1000", "📞 Call from 1000"),
            ("1000", "1000", "📞 Call from 1000"),
            ("Alice", "", "📞 Call from Alice"),
            ("", "", "📞 Call from an unknown caller"),
            (
                "<b>@room</b>\u{7}\n x",
                "12;drop\u{0}",
                "📞 Call from broom/b x <12drop>",
            ),
            (
                "Zoë  Ünal\t(Büro)",
                "sip:+1@evil",
                "📞 Call from Zoë Ünal (Büro) <sip+1evil>",
            ),
        ] {
            assert_eq!(caller_notice(name, number), want, "{name:?} {number:?}");
        }
        let long = caller_notice(&"x".repeat(500), &"1".repeat(500));
        assert!(long.chars().count() < 120, "{long}");
    }
}
