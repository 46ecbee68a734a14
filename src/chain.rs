//! Error messages with their causes, for log lines and notices.
//!
//! Layer errors keep the error they wrap as `source()` and say in their own message only what
//! they add (which address, which file). A log line needs both, or "cannot reach homeserver"
//! would hide the "connection refused" that tells the operator what to fix.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined with ": ".
///
/// Some libraries repeat their source in their own message (tungstenite's "IO error: {0}");
/// a source whose text is already on the line is left out, so no cause is printed twice.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            next = e.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {0}")]
    struct Outer(&'static str, #[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn joins_sources_without_repeating_them() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Outer("x.yaml", Middle(io));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot open x.yaml: IO error: refused"
        );
    }
}
