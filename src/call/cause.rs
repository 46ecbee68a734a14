//! Hangup reasons in both directions (PROTOCOL.md part C.2).
//!
//! Matrix has seven hangup reasons; FreeSWITCH has a hundred causes. The tables here are the
//! only place that translates between them. The causes themselves are
//! [`Cause`](crate::verto::Cause), in the verto layer.

use crate::verto::Cause;

/// A Matrix hangup `reason` mapped to the cause for `verto.bye`.
///
/// `answered` matters: a caller hanging up before the answer is a cancel (SIP 487), not a
/// normal clearing.
pub fn matrix_to_verto(reason: Option<&str>, answered: bool) -> Cause {
    match reason.unwrap_or("user_hangup") {
        "user_hangup" if !answered => Cause::OriginatorCancel,
        "user_hangup" => Cause::NormalClearing,
        "user_busy" => Cause::UserBusy,
        "invite_timeout" => Cause::NoAnswer,
        "ice_failed" => Cause::NormalTemporaryFailure,
        "ice_timeout" => Cause::MediaTimeout,
        "user_media_failed" | "no_user_media" => Cause::BearercapabilityNotavail,
        "replaced" => Cause::NormalClearing,
        _ => Cause::NormalUnspecified,
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
    // A cause not listed maps to the generic failure below.
    let cause = Cause::reported(cause_code, cause);
    let e = |reason, human| MatrixEnd { reason, human };
    use Cause as C;
    match cause {
        None | Some(Some(C::NormalClearing | C::None)) if answered => {
            e("user_hangup", "the other side hung up")
        }
        None | Some(Some(C::NormalClearing | C::NormalUnspecified | C::None)) => {
            e("user_hangup", "the call was not answered")
        }
        Some(Some(C::UserBusy | C::BusyEverywhere)) if !answered => {
            e("user_busy", "the line is busy")
        }
        Some(Some(
            C::NoUserResponse
            | C::NoAnswer
            | C::SubscriberAbsent
            | C::RecoveryOnTimerExpire
            | C::ProgressTimeout,
        )) if !answered => e("invite_timeout", "nobody answered"),
        Some(Some(
            C::CallRejected
            | C::Decline
            | C::RejectAll
            | C::Unwanted
            | C::OriginatorCancel
            | C::UserBusy
            | C::BusyEverywhere
            | C::NoUserResponse
            | C::NoAnswer
            | C::SubscriberAbsent,
        )) => e("user_hangup", "the call was declined or ended"),
        Some(Some(
            C::IncompatibleDestination | C::BearercapabilityNotavail | C::BearercapabilityNotimpl,
        )) => e(
            "ice_failed",
            "FreeSWITCH could not set up media (no usable ICE candidate or codec)",
        ),
        Some(Some(C::MediaTimeout)) => e("ice_timeout", "media stopped flowing"),
        Some(Some(C::UnallocatedNumber | C::NoRouteDestination | C::InvalidNumberFormat)) => {
            e("unknown_error", "that number does not exist")
        }
        Some(Some(C::UserNotRegistered)) => e("unknown_error", "the destination is not registered"),
        Some(Some(C::DestinationOutOfOrder)) => e(
            "unknown_error",
            "FreeSWITCH lost the connection to the bridge",
        ),
        Some(Some(C::RecoveryOnTimerExpire)) => {
            e("unknown_error", "the call could not be recovered")
        }
        Some(Some(C::SystemShutdown)) => e("unknown_error", "FreeSWITCH is shutting down"),
        _ => e("unknown_error", "the call failed in FreeSWITCH"),
    }
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
                matrix_to_verto(reason, answered).name(),
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
