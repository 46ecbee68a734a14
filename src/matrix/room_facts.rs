//! What the bot knows of its rooms' members and join rules, so that a call in a room it has
//! checked before needs no homeserver request between the invite and the dial.
//!
//! A room's facts start from the homeserver's answer (`joined_members`, the join rule) and then
//! follow the room's timeline from `/sync`. Two things would make them wrong, and both make the
//! bridge ask again instead of trusting them:
//! - a gap in the timeline (`limited`): the sync filter lazy-loads members, so a membership
//!   change inside the gap may never be sent; the facts are dropped.
//! - an answer older than what the sync already applied: an answer is only kept if no sync
//!   touched the room while the request was out (each room counts the syncs that touched it).
//!
//! Membership changes that come after an answer are applied on top of it in timeline order,
//! so the facts converge on the room's state even when the sync reports a change the answer
//! already held. An answer can still be behind the sync (a homeserver whose readers lag its
//! replication), so facts from an answer are trusted for [`ANSWER_TTL`] only: a wrong one
//! then costs a few calls, not every call in the room from then on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::client::MemberInfo;

/// A change to what a room's facts hold, read from a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `m.room.member`.
    Member {
        /// The member.
        user_id: String,
        /// `join`, `leave`, `invite`, `ban`, `knock`.
        membership: String,
        /// `displayname`.
        display_name: Option<String>,
    },
    /// `m.room.join_rules` (`None`: an event without a readable rule).
    JoinRule(Option<String>),
    /// A state event of these types that could not be read: what it changed is unknown.
    Unreadable,
}

/// Every room's facts, shared by the clones of one [`MatrixClient`](super::MatrixClient).
#[derive(Debug, Default)]
pub struct RoomFacts(Mutex<HashMap<String, Entry>>);

/// How long facts that started from a homeserver answer are used.
pub const ANSWER_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Entry {
    /// How many syncs touched the room's members or join rule.
    generation: u64,
    /// With when the answer they started from came.
    members: Option<(HashMap<String, MemberInfo>, Instant)>,
    /// The outer `None`: not known; `Some(None)`: the room has no join rule event.
    join_rule: Option<(Option<String>, Instant)>,
}

impl RoomFacts {
    /// The joined members, if known.
    pub fn members(&self, room_id: &str) -> Option<HashMap<String, MemberInfo>> {
        self.members_at(room_id, Instant::now())
    }

    fn members_at(&self, room_id: &str, now: Instant) -> Option<HashMap<String, MemberInfo>> {
        self.with(room_id, |e| fresh(&mut e.members, now).cloned())
    }

    /// The join rule, if known (`Some(None)`: the room has none).
    pub fn join_rule(&self, room_id: &str) -> Option<Option<String>> {
        self.with(room_id, |e| {
            fresh(&mut e.join_rule, Instant::now()).cloned()
        })
    }

    /// Read before asking the homeserver, and handed back with its answer.
    pub fn generation(&self, room_id: &str) -> u64 {
        self.with(room_id, |e| e.generation)
    }

    /// The homeserver's answer about the members, asked at `generation`.
    pub fn learn_members(
        &self,
        room_id: &str,
        generation: u64,
        members: &HashMap<String, MemberInfo>,
    ) {
        self.with(room_id, |e| {
            if e.generation == generation {
                e.members = Some((members.clone(), Instant::now()));
            }
        })
    }

    /// The homeserver's answer about the join rule, asked at `generation`.
    pub fn learn_join_rule(&self, room_id: &str, generation: u64, rule: Option<String>) {
        self.with(room_id, |e| {
            if e.generation == generation {
                e.join_rule = Some((rule, Instant::now()));
            }
        })
    }

    /// One sync's news of a room: its state and timeline changes in order, and whether its
    /// timeline had a gap.
    pub fn follow(&self, room_id: &str, limited: bool, changes: &[Change]) {
        if !limited && changes.is_empty() {
            return;
        }
        self.with(room_id, |e| {
            e.generation += 1;
            if limited || changes.contains(&Change::Unreadable) {
                e.members = None;
                e.join_rule = None;
                return;
            }
            for c in changes {
                e.apply(c);
            }
        })
    }

    /// The bot left the room: nothing it knew of it holds any more.
    pub fn forget(&self, room_id: &str) {
        self.follow(room_id, true, &[]);
    }

    fn with<T>(&self, room_id: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut rooms = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(rooms.entry(room_id.to_owned()).or_default())
    }
}

/// The value, unless it came from an answer older than [`ANSWER_TTL`] (then it is dropped).
fn fresh<T>(slot: &mut Option<(T, Instant)>, now: Instant) -> Option<&T> {
    if slot
        .as_ref()
        .is_some_and(|(_, at)| now.saturating_duration_since(*at) > ANSWER_TTL)
    {
        *slot = None;
    }
    slot.as_ref().map(|(v, _)| v)
}

impl Entry {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Member {
                user_id,
                membership,
                display_name,
            } => {
                let Some((members, _)) = &mut self.members else {
                    return;
                };
                if membership == "join" {
                    let info = MemberInfo {
                        display_name: display_name.clone(),
                    };
                    members.insert(user_id.clone(), info);
                } else {
                    members.remove(user_id);
                }
            }
            // The event itself is the rule: as fresh as an answer.
            Change::JoinRule(rule) => self.join_rule = Some((rule.clone(), Instant::now())),
            Change::Unreadable => {}
        }
    }
}

/// The changes among a room's raw state or timeline events, in order.
pub fn changes<'a>(events: impl IntoIterator<Item = &'a RawValue>) -> Vec<Change> {
    events.into_iter().filter_map(change).collect()
}

fn change(raw: &RawValue) -> Option<Change> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: String,
        state_key: Option<String>,
        #[serde(default)]
        content: serde_json::Value,
    }
    let Ok(ev) = serde_json::from_str::<Envelope>(raw.get()) else {
        // Not even an event: whether it was one of ours is unknown.
        return Some(Change::Unreadable);
    };
    let str_of = |key: &str| {
        ev.content
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match (ev.kind.as_str(), ev.state_key) {
        ("m.room.member", Some(user_id)) => match str_of("membership") {
            Some(membership) => Some(Change::Member {
                user_id,
                membership,
                display_name: str_of("displayname"),
            }),
            None => Some(Change::Unreadable),
        },
        ("m.room.join_rules", Some(_)) => Some(Change::JoinRule(str_of("join_rule"))),
        ("m.room.member" | "m.room.join_rules", None) => Some(Change::Unreadable),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("valid JSON")
    }

    fn member(user: &str, membership: &str) -> Change {
        Change::Member {
            user_id: user.into(),
            membership: membership.into(),
            display_name: None,
        }
    }

    fn two() -> HashMap<String, MemberInfo> {
        ["@bot:x", "@a:x"]
            .into_iter()
            .map(|u| (u.to_owned(), MemberInfo { display_name: None }))
            .collect()
    }

    fn names(facts: &RoomFacts) -> Option<Vec<String>> {
        facts.members("!r").map(|m| {
            let mut v: Vec<_> = m.into_keys().collect();
            v.sort();
            v
        })
    }

    #[test]
    fn changes_are_read_from_state_events() {
        let events = [
            raw(
                r#"{"type":"m.room.member","state_key":"@a:x","content":{"membership":"join","displayname":"A"}}"#,
            ),
            raw(r#"{"type":"m.room.join_rules","state_key":"","content":{"join_rule":"public"}}"#),
            raw(r#"{"type":"m.call.invite","content":{}}"#),
            raw(r#"{"type":"m.room.member","content":{"membership":"join"}}"#),
            raw(r#"{"type":"m.room.member","state_key":"@b:x","content":{}}"#),
            raw(r#"[1]"#),
        ];
        let got = changes(events.iter().map(|r| r.as_ref()));
        let a = Change::Member {
            user_id: "@a:x".into(),
            membership: "join".into(),
            display_name: Some("A".into()),
        };
        let want = vec![
            a,
            Change::JoinRule(Some("public".into())),
            Change::Unreadable,
            Change::Unreadable,
            Change::Unreadable,
        ];
        assert_eq!(got, want);
    }

    /// Each row: the syncs that come while the request is out, the syncs after the answer is
    /// stored, and the members then known (`None`: ask again).
    #[test]
    fn answers_and_syncs_combine() {
        type Sync = (bool, Vec<Change>);
        type Row = (
            &'static str,
            Vec<Sync>,
            Vec<Sync>,
            Option<Vec<&'static str>>,
        );
        let join_c = || (false, vec![member("@c:x", "join")]);
        let leave_a = || (false, vec![member("@a:x", "leave")]);
        let rows: [Row; 7] = [
            ("answer alone", vec![], vec![], Some(vec!["@a:x", "@bot:x"])),
            (
                "a join after it",
                vec![],
                vec![join_c()],
                Some(vec!["@a:x", "@bot:x", "@c:x"]),
            ),
            (
                "a leave after it",
                vec![],
                vec![leave_a()],
                Some(vec!["@bot:x"]),
            ),
            ("a sync while asking", vec![join_c()], vec![], None),
            ("a gap after it", vec![], vec![(true, vec![])], None),
            (
                "an unreadable member",
                vec![],
                vec![(false, vec![Change::Unreadable])],
                None,
            ),
            (
                "a sync without news",
                vec![(false, vec![])],
                vec![],
                Some(vec!["@a:x", "@bot:x"]),
            ),
        ];
        for (name, during, after, want) in rows {
            let facts = RoomFacts::default();
            let generation = facts.generation("!r");
            for (limited, c) in &during {
                facts.follow("!r", *limited, c);
            }
            facts.learn_members("!r", generation, &two());
            for (limited, c) in &after {
                facts.follow("!r", *limited, c);
            }
            let want = want.map(|w| w.into_iter().map(str::to_owned).collect::<Vec<_>>());
            assert_eq!(names(&facts), want, "{name}");
        }
    }

    #[test]
    fn join_rule_follows_the_timeline_and_leaving_forgets() {
        let facts = RoomFacts::default();
        assert_eq!(facts.join_rule("!r"), None);
        facts.learn_join_rule("!r", facts.generation("!r"), None);
        assert_eq!(facts.join_rule("!r"), Some(None));
        facts.follow("!r", false, &[Change::JoinRule(Some("public".into()))]);
        assert_eq!(facts.join_rule("!r"), Some(Some("public".into())));
        facts.learn_members("!r", facts.generation("!r"), &two());
        facts.forget("!r");
        assert_eq!((facts.join_rule("!r"), names(&facts)), (None, None));
        assert_eq!(facts.members("!other"), None);
    }

    /// An answer is used for `ANSWER_TTL`, then asked again.
    #[test]
    fn answers_expire() {
        let facts = RoomFacts::default();
        facts.learn_members("!r", facts.generation("!r"), &two());
        let later = Instant::now() + ANSWER_TTL - Duration::from_secs(1);
        assert!(facts.members_at("!r", later).is_some());
        let expired = later + Duration::from_secs(2);
        assert_eq!(facts.members_at("!r", expired), None);
        assert_eq!(facts.members("!r"), None, "dropped");
    }
}
