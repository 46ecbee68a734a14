//! FreeSWITCH hangup causes: the names `verto.bye` carries and the codes it reports.
//!
//! Only the causes vertobot sends or maps are listed; FreeSWITCH has over a hundred. The codes
//! are FreeSWITCH 1.10's (`switch_types.h`): Q.850 below 128, then FreeSWITCH's own from 487 and
//! 700 up, so a received code can be told apart from a SIP status.

use std::fmt;

macro_rules! causes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $name:literal;)*) => {
        /// A FreeSWITCH hangup cause.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Cause {
            $($(#[$doc])* $variant = $code,)*
        }

        impl Cause {
            /// Every listed cause.
            pub const ALL: &'static [Cause] = &[$(Cause::$variant,)*];

            /// The name FreeSWITCH uses (`NORMAL_CLEARING`), as `verto.bye` sends it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Cause::$variant => $name,)*
                }
            }
        }
    };
}

causes! {
    /// No cause given.
    None = 0, "NONE";
    /// The number does not exist.
    UnallocatedNumber = 1, "UNALLOCATED_NUMBER";
    /// No route to the destination.
    NoRouteDestination = 3, "NO_ROUTE_DESTINATION";
    /// A normal hangup.
    NormalClearing = 16, "NORMAL_CLEARING";
    /// Busy.
    UserBusy = 17, "USER_BUSY";
    /// Nobody responded.
    NoUserResponse = 18, "NO_USER_RESPONSE";
    /// Nobody answered.
    NoAnswer = 19, "NO_ANSWER";
    /// The subscriber is absent.
    SubscriberAbsent = 20, "SUBSCRIBER_ABSENT";
    /// Rejected.
    CallRejected = 21, "CALL_REJECTED";
    /// FreeSWITCH lost the client (a dropped verto socket).
    DestinationOutOfOrder = 27, "DESTINATION_OUT_OF_ORDER";
    /// A malformed number.
    InvalidNumberFormat = 28, "INVALID_NUMBER_FORMAT";
    /// Normal, otherwise unspecified.
    NormalUnspecified = 31, "NORMAL_UNSPECIFIED";
    /// The bridge is at its call limit (SIP 503).
    NormalCircuitCongestion = 34, "NORMAL_CIRCUIT_CONGESTION";
    /// A temporary failure (ICE failed, no reply to the invite, no re-attach).
    NormalTemporaryFailure = 41, "NORMAL_TEMPORARY_FAILURE";
    /// The media cannot be used.
    BearercapabilityNotavail = 58, "BEARERCAPABILITY_NOTAVAIL";
    /// The media is not implemented.
    BearercapabilityNotimpl = 65, "BEARERCAPABILITY_NOTIMPL";
    /// No common codec or no usable candidate.
    IncompatibleDestination = 88, "INCOMPATIBLE_DESTINATION";
    /// A message that could not be read (an unreadable Matrix call invite).
    InvalidMsgUnspecified = 95, "INVALID_MSG_UNSPECIFIED";
    /// A timer expired during recovery.
    RecoveryOnTimerExpire = 102, "RECOVERY_ON_TIMER_EXPIRE";
    /// The caller cancelled before the answer (SIP 487).
    OriginatorCancel = 487, "ORIGINATOR_CANCEL";
    /// FreeSWITCH or the bridge is stopping.
    SystemShutdown = 701, "SYSTEM_SHUTDOWN";
    /// Another device answered the call.
    LoseRace = 702, "LOSE_RACE";
    /// The call reached its maximum length.
    AllottedTimeout = 802, "ALLOTTED_TIMEOUT";
    /// Media stopped flowing.
    MediaTimeout = 804, "MEDIA_TIMEOUT";
    /// The destination is not registered.
    UserNotRegistered = 806, "USER_NOT_REGISTERED";
    /// No progress in time.
    ProgressTimeout = 807, "PROGRESS_TIMEOUT";
    /// Busy on every device.
    BusyEverywhere = 815, "BUSY_EVERYWHERE";
    /// Declined.
    Decline = 816, "DECLINE";
    /// Unwanted.
    Unwanted = 819, "UNWANTED";
    /// Rejected on every device.
    RejectAll = 825, "REJECT_ALL";
}

impl Cause {
    /// The numeric code (`causeCode`).
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The listed cause with this code.
    pub fn from_code(code: i64) -> Option<Cause> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The cause FreeSWITCH reported (`verto.bye`, an error reply): its code first, its name
    /// as fallback. Outer `None`: it reported none; inner `None`: one vertobot does not list
    /// (an unknown name is not "no cause").
    pub fn reported(code: Option<i64>, name: Option<&str>) -> Option<Option<Cause>> {
        match (code, name) {
            (Some(c), _) => Some(Cause::from_code(c)),
            (None, Some(n)) => Some(Cause::from_name(n)),
            (None, None) => None,
        }
    }

    /// The listed cause with this name, in any case (FreeSWITCH's are upper case).
    pub fn from_name(name: &str) -> Option<Cause> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for &c in Cause::ALL {
            assert_eq!(Cause::from_code(c.code()), Some(c), "{c}");
            assert_eq!(Cause::from_name(c.name()), Some(c), "{c}");
        }
        assert_eq!(Cause::NormalClearing.code(), 16);
        assert_eq!(Cause::UserBusy.name(), "USER_BUSY");
        assert_eq!(
            Cause::from_name("incompatible_destination"),
            Some(Cause::IncompatibleDestination)
        );
        assert_eq!(Cause::from_name("WHATEVER"), None);
        assert_eq!(Cause::from_code(500), None);
        assert_eq!(Cause::SystemShutdown.to_string(), "SYSTEM_SHUTDOWN");
    }
}
