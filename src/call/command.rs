//! The text commands callers type in a room: `!help`, `!dtmf`, `!dial`.

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `!help`.
    Help,
    /// `!dtmf DIGITS`; the string is as typed.
    Dtmf(String),
    /// `!dial` alone: show the destination.
    DialShow,
    /// `!dial NUMBER`.
    DialSet(String),
    /// `!dial reset`: back to the configured routes.
    DialReset,
}

/// Parses a message body; `None` when it is not one of our commands.
pub fn parse(body: &str) -> Option<Command> {
    let mut words = body.split_whitespace();
    let cmd = words.next()?.to_ascii_lowercase();
    let rest: Vec<&str> = words.collect();
    match cmd.as_str() {
        "!help" => Some(Command::Help),
        "!dtmf" => Some(Command::Dtmf(rest.concat())),
        "!dial" => match rest.as_slice() {
            [] => Some(Command::DialShow),
            ["reset"] | ["default"] => Some(Command::DialReset),
            parts => Some(Command::DialSet(parts.concat())),
        },
        _ => None,
    }
}

/// Validates `!dtmf` digits: returns them upper-cased, or why they were refused.
pub fn check_digits(d: &str, max: usize) -> Result<String, String> {
    if d.is_empty() {
        return Err("Usage: !dtmf DIGITS, for example !dtmf *5 or !dtmf 1234#".into());
    }
    if let Some(bad) = d.chars().find(|c| !crate::config::is_dtmf_digit(*c)) {
        return Err(format!(
            "'{bad}' is not a DTMF digit: use 0-9, *, #, A-D, and w or W for a pause."
        ));
    }
    if d.chars().count() > max {
        return Err(format!("Too many digits: at most {max} at a time."));
    }
    Ok(d.chars()
        .map(|c| {
            if "abcd".contains(c) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect())
}

/// The `!help` text.
pub fn help(dial_enabled: bool) -> String {
    let mut s = String::from(
        "Call me (voice call) to reach the phone network.\n\
         !dtmf DIGITS — send keypad digits during a call, e.g. !dtmf *5 (0-9 * # A-D, w/W pause)\n",
    );
    if dial_enabled {
        s.push_str(
            "!dial NUMBER — calls from this room go to NUMBER\n\
             !dial — show where calls from this room go\n\
             !dial reset — back to the default destination\n",
        );
    } else {
        s.push_str("!dial — show where calls from this room go\n");
    }
    s.push_str("!help — this text");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases = [
            ("!help", Some(Command::Help)),
            ("  !HELP  ", Some(Command::Help)),
            ("!dtmf 12 34#", Some(Command::Dtmf("1234#".into()))),
            ("!dtmf", Some(Command::Dtmf(String::new()))),
            ("!dial", Some(Command::DialShow)),
            (
                "!dial +49 30 1234",
                Some(Command::DialSet("+49301234".into())),
            ),
            ("!dial reset", Some(Command::DialReset)),
            ("hello", None),
            ("!unknown", None),
            ("", None),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body), want, "{body}");
        }
    }

    #[test]
    fn digits_table() {
        assert_eq!(check_digits("*5", 32), Ok("*5".into()));
        assert_eq!(check_digits("12ab#", 32), Ok("12AB#".into()));
        assert_eq!(check_digits("1w2W3", 32), Ok("1w2W3".into()));
        assert!(check_digits("", 32).unwrap_err().contains("Usage"));
        assert!(check_digits("12x", 32).unwrap_err().contains("'x'"));
        assert!(check_digits("123", 2).unwrap_err().contains("at most 2"));
    }
}
