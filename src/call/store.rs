//! Answered calls saved in `state_dir/calls/`, so that a restarted bridge can take them
//! back when FreeSWITCH re-offers them (`verto.attach`).

use serde::{Deserialize, Serialize};

use super::machine::{Call, Direction, Version};
use crate::sdp::TrickleCandidate;
use std::collections::HashMap;

use crate::state::{StateError, StateStore};

/// What is needed to resume one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The Matrix room.
    pub room_id: String,
    /// Matrix `call_id`.
    pub call_id: String,
    /// The caller's user id.
    pub caller: String,
    /// The caller's `party_id`.
    pub caller_party: Option<String>,
    /// Our `party_id`.
    pub our_party: String,
    /// The caller's VoIP version (0 or 1).
    pub version: u8,
    /// The caller's original offer (for `a=mid` repair).
    pub offer: String,
    /// The caller's original candidates.
    pub trickled: Vec<TrickleCandidate>,
    /// Inbound calls: the Matrix user rung (then `caller` is that user too). Absent in files
    /// of earlier versions, which only had outbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_user: Option<String>,
    /// Inbound calls: the answering device's SDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_answer: Option<String>,
}

impl Record {
    /// From a live call.
    pub fn of(room_id: &str, caller: &str, call: &Call) -> Self {
        let (setup, trickled) = (call.setup(), call.trickled());
        let inbound_user = match &setup.direction {
            Direction::Inbound { user, .. } => Some(user.clone()),
            Direction::Outbound => None,
        };
        Self {
            room_id: room_id.to_owned(),
            call_id: setup.call_id.clone(),
            caller: caller.to_owned(),
            caller_party: setup.caller_party.clone(),
            our_party: setup.our_party.clone(),
            version: match setup.version {
                Version::V0 => 0,
                Version::V1 => 1,
            },
            offer: setup.offer.clone(),
            trickled: trickled.to_vec(),
            inbound_user,
            peer_answer: call.peer_answer().map(str::to_owned),
        }
    }
}

/// The answered calls, one small file each in `state_dir/calls/`, named by verto `callID`.
/// Saving or forgetting a call rewrites only its own file, so the cost of an answer stays flat
/// however many calls are up; one file for all of them was rewritten and synced on every
/// answer and every end (2.3 MB at 1,000 calls), under a lock every call shared.
///
/// The writes (each with an `fsync`) happen on a thread of their own, in the order they were
/// asked for, so that no call's task and no runtime worker waits for the disk between a
/// verto frame and the Matrix event it causes. [`CallStore::flush`] waits for them at the stop.
#[derive(Debug)]
pub struct CallStore {
    dir: Option<StateStore>,
    writer: Option<std::sync::mpsc::Sender<Job>>,
}

/// Work for the writer thread.
#[derive(Debug)]
enum Job {
    Set(String, Option<Box<Record>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The directory in `state_dir`.
pub const DIR: &str = "calls";

/// The single file of earlier versions, read once and moved into [`DIR`].
const LEGACY_FILE: &str = "calls.json";

impl CallStore {
    /// Opens `state_dir/calls/`, taking over the calls of an earlier version's `calls.json`.
    /// A directory that cannot be made is logged: the bridge runs on, without recovery.
    pub fn load(store: &StateStore) -> Self {
        let dir = match StateStore::open(&store.dir().join(DIR)) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep answered calls for a restart");
                None
            }
        };
        let writer = dir.clone().and_then(spawn_writer);
        let this = Self { dir, writer };
        this.take_legacy(store);
        this
    }

    /// Saves (`Some`) or forgets (`None`) one call, soon: the write is queued.
    pub fn set(&self, verto_call_id: &str, record: Option<Record>) {
        let Some(w) = &self.writer else {
            return self.write(verto_call_id, record);
        };
        let job = Job::Set(verto_call_id.to_owned(), record.map(Box::new));
        if let Err(std::sync::mpsc::SendError(Job::Set(id, record))) = w.send(job) {
            // The thread is gone (it cannot end while we hold its queue, but if it did): write
            // here rather than lose the change.
            self.write(&id, record.map(|r| *r));
        }
    }

    /// Returns once every write queued before it is on disk.
    pub async fn flush(&self) {
        let Some(w) = &self.writer else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if w.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn take_legacy(&self, store: &StateStore) {
        let legacy: Option<HashMap<String, Record>> = match store.read_json(LEGACY_FILE) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a corrupt state file");
                Some(HashMap::new())
            }
        };
        let Some(legacy) = legacy else { return };
        // Written at once: the bridge lists the saved calls right after loading.
        for (id, r) in legacy {
            self.write(&id, Some(r));
        }
        if let Err(e) = std::fs::remove_file(store.dir().join(LEGACY_FILE)) {
            tracing::warn!(error = %e, "cannot remove the old calls.json");
        }
    }

    /// Every saved call, by verto `callID`. An unreadable file is logged and skipped.
    pub fn all(&self) -> Vec<(String, Record)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir.dir()) else {
            return Vec::new();
        };
        let names = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'));
        names
            .filter_map(|n| match dir.read_json::<Saved>(&n) {
                Ok(Some(s)) => Some((s.verto_call_id, s.record)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a corrupt saved call");
                    None
                }
            })
            .collect()
    }

    fn write(&self, verto_call_id: &str, record: Option<Record>) {
        if let Some(dir) = &self.dir {
            write(dir, verto_call_id, record);
        }
    }
}

/// The writer thread; `None` (writes then happen on the caller's thread) if it cannot start.
fn spawn_writer(dir: StateStore) -> Option<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("vertobot-calls".into())
        .spawn(move || {
            // Ends when the store, the only sender, is dropped.
            for job in rx {
                match job {
                    Job::Set(id, record) => write(&dir, &id, record.map(|r| *r)),
                    Job::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the thread that saves calls; saving inline");
            None
        }
    }
}

fn write(dir: &StateStore, verto_call_id: &str, record: Option<Record>) {
    let name = file_name(verto_call_id);
    let res = match record {
        Some(record) => dir.write_json(
            &name,
            &Saved {
                verto_call_id: verto_call_id.to_owned(),
                record,
            },
        ),
        None => match std::fs::remove_file(dir.dir().join(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
                path: dir.dir().join(&name),
                source: e,
            }),
            _ => Ok(()),
        },
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "cannot save state; a restart will not see this change");
    }
}

/// One call's file: the id is kept inside, since the file name may be escaped.
#[derive(Serialize, Deserialize)]
struct Saved {
    verto_call_id: String,
    #[serde(flatten)]
    record: Record,
}

/// A file name for any id: FreeSWITCH's and ours are UUIDs, kept as they are; anything else
/// is hex-encoded so that it cannot name a path outside the directory.
fn file_name(id: &str) -> String {
    let plain = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if plain {
        format!("{id}.json")
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(call_id: &str) -> Record {
        Record {
            room_id: "!r:localhost".into(),
            call_id: call_id.into(),
            caller: "@alice:localhost".into(),
            caller_party: Some("P".into()),
            our_party: "BOT".into(),
            version: 1,
            offer: "v=0\r\n".into(),
            trickled: Vec::new(),
            inbound_user: None,
            peer_answer: None,
        }
    }

    fn state() -> StateStore {
        let dir = std::env::temp_dir().join(format!("vertobot-calls-{}", uuid::Uuid::new_v4()));
        StateStore::open(&dir).unwrap()
    }

    #[tokio::test]
    async fn saves_forgets_and_reloads_one_file_per_call() {
        let st = state();
        let calls = CallStore::load(&st);
        let odd = "../../etc/passwd";
        for id in ["5f0c8a4e-1d2b-4c3a-9e8f-0a1b2c3d4e5f", odd] {
            calls.set(id, Some(record(id)));
        }
        calls.set("5f0c8a4e-1d2b-4c3a-9e8f-0a1b2c3d4e5f", None);
        calls.set("never-saved", None);
        calls.flush().await;
        let files: Vec<_> = std::fs::read_dir(st.dir().join(DIR)).unwrap().collect();
        assert_eq!(files.len(), 1, "one file left, inside the directory");
        let again = CallStore::load(&st).all();
        assert_eq!(again, vec![(odd.to_owned(), record(odd))]);
    }

    #[test]
    fn takes_over_the_single_file_of_earlier_versions() {
        let st = state();
        let old: HashMap<String, Record> = [("v1".to_owned(), record("c1"))].into();
        st.write_json(LEGACY_FILE, &old).unwrap();
        let calls = CallStore::load(&st);
        assert_eq!(calls.all(), vec![("v1".to_owned(), record("c1"))]);
        assert!(!st.dir().join(LEGACY_FILE).exists());
    }
}
