//! What survives a restart, as small JSON files in `state_dir`.
//!
//! Files are replaced atomically (write to a temporary file, then rename), so a crash mid-write
//! leaves the previous version. `session.json` holds the access token and is created with mode
//! 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the JSON we wrote.
    #[error("{path}: corrupt state file ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
}

/// The directory and its files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

#[derive(Serialize, serde::Deserialize)]
struct SyncPos {
    since: String,
}

impl StateStore {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn write<T: Serialize>(&self, name: &str, value: &T, private: bool) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The saved `/sync` position.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved `/sync` position.
    pub fn since(&self) -> Result<Option<String>, StateError> {
        Ok(self.read::<SyncPos>("sync.json")?.map(|p| p.since))
    }

    /// Saves the `/sync` position.
    pub fn save_since(&self, since: &str) -> Result<(), StateError> {
        self.write(
            "sync.json",
            &SyncPos {
                since: since.to_owned(),
            },
            false,
        )
    }

    /// Records that the sync loop is alive (for `vertobot --health`).
    pub fn touch_alive(&self) -> Result<(), StateError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.write("alive.json", &serde_json::json!({"synced_at": now}), false)
    }

    /// Seconds since the sync loop last succeeded, if it ever did.
    pub fn alive_age(&self) -> Result<Option<u64>, StateError> {
        let v: Option<serde_json::Value> = self.read("alive.json")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(v.and_then(|v| v["synced_at"].as_u64())
            .map(|t| now.saturating_sub(t)))
    }

    /// Per-call data of the call layer, keyed by file name; kept generic so the store knows
    /// nothing of calls.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        self.read(name)
    }

    /// Writes a JSON file atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), StateError> {
        self.write(name, v, false)
    }

    /// Writes a JSON file atomically, readable by its owner only: for files with secrets
    /// (the Matrix access token).
    pub fn write_private_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), StateError> {
        self.write(name, v, true)
    }
}

/// A string-keyed map kept in one JSON file of `state_dir`, saved on every change. A corrupt
/// file is logged and starts empty: losing `!dial` choices or recoverable calls must not stop
/// the bridge.
pub struct SavedMap<V> {
    store: StateStore,
    file: &'static str,
    map: std::collections::HashMap<String, V>,
}

impl<V: Serialize + DeserializeOwned + Clone> SavedMap<V> {
    /// Loads `file` from the store.
    pub fn load(store: StateStore, file: &'static str) -> Self {
        let map = match store.read(file) {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a corrupt state file");
                Default::default()
            }
        };
        Self { store, file, map }
    }

    /// One entry.
    pub fn get(&self, key: &str) -> Option<V> {
        self.map.get(key).cloned()
    }

    /// All entries.
    pub fn all(&self) -> Vec<(String, V)> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Sets (`Some`) or removes (`None`) an entry, and saves when something changed.
    pub fn set(&mut self, key: &str, value: Option<V>) {
        let changed = match value {
            Some(v) => {
                self.map.insert(key.to_owned(), v);
                true
            }
            None => self.map.remove(key).is_some(),
        };
        if changed {
            if let Err(e) = self.store.write(self.file, &self.map, false) {
                tracing::warn!(error = %e, "cannot save state; a restart will not see this change");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_permissions() {
        let dir = std::env::temp_dir().join(format!("vertobot-state-{}", uuid::Uuid::new_v4()));
        let st = StateStore::open(&dir).unwrap();
        assert_eq!(st.since().unwrap(), None);
        st.save_since("s1").unwrap();
        st.save_since("s2").unwrap();
        assert_eq!(st.since().unwrap().as_deref(), Some("s2"));
        let secret = serde_json::json!({"access_token": "t"});
        st.write_private_json("session.json", &secret).unwrap();
        assert_eq!(st.read_json("session.json").unwrap(), Some(secret));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("session.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "session.json must be private");
        }
        let mut m: SavedMap<String> = SavedMap::load(st.clone(), "map.json");
        m.set("a", Some("1".into()));
        m.set("b", Some("2".into()));
        m.set("a", None);
        let m: SavedMap<String> = SavedMap::load(st.clone(), "map.json");
        assert_eq!((m.get("a"), m.get("b")), (None, Some("2".into())));
        std::fs::write(dir.join("map.json"), "{").unwrap();
        assert!(SavedMap::<String>::load(st.clone(), "map.json")
            .all()
            .is_empty());
        std::fs::write(dir.join("sync.json"), "garbage").unwrap();
        assert!(matches!(st.since(), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
