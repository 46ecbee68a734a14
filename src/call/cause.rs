//! Hangup reasons in both directions (PROTOCOL.md part C.2).
//!
//! Matrix has seven hangup reasons; FreeSWITCH has a hundred causes. The tables here are the
//! only place that translates between them.

/// A Matrix hangup `reason` mapped to the `cause` name for `verto.bye`.
///
/// `answered` matters: a caller hanging up before the answer is a cancel (SIP 487), not a
/// normal clearing.
pub fn matrix_to_verto(reason: Option<&str>, answered: bool) -> &'static str {
    match reason.unwrap_or("user_hangup") {
        "user_hangup" if !answered => "ORIGINATOR_CANCEL",
        "user_hangup" => "NORMAL_CLEARING",
        "user_busy" => "USER_BUSY",
        "invite_timeout" => "NO_ANSWER",
        "ice_failed" => "NORMAL_TEMPORARY_FAILURE",
        "ice_timeout" => "MEDIA_TIMEOUT",
        "user_media_failed" | "no_user_media" => "BEARERCAPABILITY_NOTAVAIL",
        "replaced" => "NORMAL_CLEARING",
        _ => "NORMAL_UNSPECIFIED",
    }
}

/// What a FreeSWITCH hangup means for the Matrix caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixEnd {
    /// The Matrix hangup `reason` (also sent, outside the spec, on a reject, where
    /// matrix-js-sdk shows it: Element says "User busy" for `user_busy`).
    pub reason: &'static str,
    /// A short human explanation for logs and notices.
    pub human: &'static str,
}

/// Maps a FreeSWITCH cause (number first, name as fallback) to a Matrix reason.
pub fn verto_to_matrix(cause_code: Option<i64>, cause: Option<&str>, answered: bool) -> MatrixEnd {
    // An unknown name is not "no cause": it maps to the generic failure below.
    let code = match (cause_code, cause) {
        (Some(c), _) => Some(c),
        (None, Some(n)) => Some(code_of_name(n).unwrap_or(-1)),
        (None, None) => None,
    };
    let e = |reason, human| MatrixEnd { reason, human };
    match code {
        Some(16) | Some(0) | None if answered => e("user_hangup", "the other side hung up"),
        Some(16) | Some(31) | Some(0) | None => e("user_hangup", "the call was not answered"),
        Some(17) | Some(815) if !answered => e("user_busy", "the line is busy"),
        Some(18) | Some(19) | Some(20) | Some(102) | Some(807) if !answered => {
            e("invite_timeout", "nobody answered")
        }
        Some(21) | Some(816) | Some(825) | Some(819) | Some(487) | Some(17) | Some(815)
        | Some(18) | Some(19) | Some(20) => e("user_hangup", "the call was declined or ended"),
        Some(88) | Some(58) | Some(65) => e(
            "ice_failed",
            "FreeSWITCH could not set up media (no usable ICE candidate or codec)",
        ),
        Some(804) => e("ice_timeout", "media stopped flowing"),
        Some(1) | Some(3) | Some(28) => e("unknown_error", "that number does not exist"),
        Some(806) => e("unknown_error", "the destination is not registered"),
        Some(27) => e(
            "unknown_error",
            "FreeSWITCH lost the connection to the bridge",
        ),
        Some(102) => e("unknown_error", "the call could not be recovered"),
        Some(701) => e("unknown_error", "FreeSWITCH is shutting down"),
        _ => e("unknown_error", "the call failed in FreeSWITCH"),
    }
}

/// FreeSWITCH cause names for the codes the mapping uses.
fn code_of_name(name: &str) -> Option<i64> {
    Some(match name.to_ascii_uppercase().as_str() {
        "NONE" => 0,
        "UNALLOCATED_NUMBER" => 1,
        "NO_ROUTE_DESTINATION" => 3,
        "NORMAL_CLEARING" => 16,
        "USER_BUSY" => 17,
        "NO_USER_RESPONSE" => 18,
        "NO_ANSWER" => 19,
        "SUBSCRIBER_ABSENT" => 20,
        "CALL_REJECTED" => 21,
        "DESTINATION_OUT_OF_ORDER" => 27,
        "SYSTEM_SHUTDOWN" => 701,
        "INVALID_NUMBER_FORMAT" => 28,
        "NORMAL_UNSPECIFIED" => 31,
        "BEARERCAPABILITY_NOTAVAIL" => 58,
        "BEARERCAPABILITY_NOTIMPL" => 65,
        "INCOMPATIBLE_DESTINATION" => 88,
        "RECOVERY_ON_TIMER_EXPIRE" => 102,
        "ORIGINATOR_CANCEL" => 487,
        "MEDIA_TIMEOUT" => 804,
        "USER_NOT_REGISTERED" => 806,
        "PROGRESS_TIMEOUT" => 807,
        "BUSY_EVERYWHERE" => 815,
        "DECLINE" => 816,
        "UNWANTED" => 819,
        "REJECT_ALL" => 825,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_to_verto_table() {
        let cases = [
            (None, false, "ORIGINATOR_CANCEL"),
            (Some("user_hangup"), false, "ORIGINATOR_CANCEL"),
            (None, true, "NORMAL_CLEARING"),
            (Some("user_hangup"), true, "NORMAL_CLEARING"),
            (Some("user_busy"), true, "USER_BUSY"),
            (Some("invite_timeout"), false, "NO_ANSWER"),
            (Some("ice_failed"), false, "NORMAL_TEMPORARY_FAILURE"),
            (Some("ice_timeout"), true, "MEDIA_TIMEOUT"),
            (Some("user_media_failed"), true, "BEARERCAPABILITY_NOTAVAIL"),
            (Some("no_user_media"), false, "BEARERCAPABILITY_NOTAVAIL"),
            (Some("signalling_timeout"), true, "NORMAL_UNSPECIFIED"),
            (Some("something_new"), true, "NORMAL_UNSPECIFIED"),
        ];
        for (reason, answered, want) in cases {
            assert_eq!(
                matrix_to_verto(reason, answered),
                want,
                "{reason:?} {answered}"
            );
        }
    }

    #[test]
    fn verto_to_matrix_table() {
        let cases = [
            (Some(16), None, true, "user_hangup"),
            (Some(16), None, false, "user_hangup"),
            (Some(17), None, false, "user_busy"),
            (Some(17), None, true, "user_hangup"),
            (Some(19), None, false, "invite_timeout"),
            (Some(21), None, false, "user_hangup"),
            (Some(88), None, false, "ice_failed"),
            (Some(88), None, true, "ice_failed"),
            (Some(804), None, true, "ice_timeout"),
            (Some(3), None, false, "unknown_error"),
            (Some(806), None, false, "unknown_error"),
            (Some(41), None, true, "unknown_error"),
            (None, Some("USER_BUSY"), false, "user_busy"),
            (None, Some("incompatible_destination"), false, "ice_failed"),
            (None, Some("WHATEVER"), true, "unknown_error"),
            (None, None, true, "user_hangup"),
            (Some(701), None, true, "unknown_error"),
        ];
        for (code, name, answered, want) in cases {
            assert_eq!(
                verto_to_matrix(code, name, answered).reason,
                want,
                "{code:?} {name:?} {answered}"
            );
        }
        // What a stopping FreeSWITCH sends for each of its calls (seen on 1.10.12).
        let end = verto_to_matrix(Some(701), Some("SYSTEM_SHUTDOWN"), true);
        assert_eq!(end.human, "FreeSWITCH is shutting down");
        assert_eq!(verto_to_matrix(None, Some("SYSTEM_SHUTDOWN"), true), end);
    }
}
