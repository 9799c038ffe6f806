//! Sessions: one cgroup v2 directory per agent run,
//! `<cgroup2>/<parent>/<session-id>`, registered in the kernel's SESSIONS
//! map so that every probe is scoped to it and its descendant cgroups.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "invalid session id {0:?}: use 1-64 characters from [A-Za-z0-9._-], not starting with '.'"
    )]
    InvalidId(String),
    #[error("session {0} already exists")]
    Exists(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("updating the kernel session table: {0}")]
    Map(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SessionError + 'a {
    move |source| SessionError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Validates a caller-chosen session id (it becomes a directory name).
pub fn validate_id(id: &str) -> Result<(), SessionError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SessionError::InvalidId(id.to_string()))
    }
}

/// A live session.
#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub id: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub policy: Option<String>,
    pub workspace: Option<String>,
    pub command: Vec<String>,
    /// Creator's uid (SO_PEERCRED).
    pub uid: u32,
    pub started_unix_ns: i64,
    /// The agent's own session id (Codex `conversation.id`), once a hook
    /// attached it.
    pub conversation_id: Option<String>,
    /// Event counts by `kind/decision`.
    pub counts: HashMap<String, u64>,
}

/// The kernel-side session table, abstracted so the manager is testable.
pub trait SessionTable {
    /// Registers (or updates) a session cgroup with its `SESSIONS` value
    /// (see `monitor_common::policy::session_value`).
    fn insert(&mut self, cgroup_id: u64, value: u32) -> Result<(), String>;
    fn remove(&mut self, cgroup_id: u64) -> Result<(), String>;
    /// The value registered for a cgroup, if any (kept across a restart
    /// in the pinned map).
    fn current(&self, cgroup_id: u64) -> Option<u32>;
}

/// Creates, tracks and ends sessions.
pub struct Manager {
    /// `<cgroup2>/<parent>`.
    pub parent: PathBuf,
    pub sessions: HashMap<String, Session>,
    by_cgroup: HashMap<u64, String>,
}

pub fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Manager {
    /// Makes sure `parent` exists.
    pub fn new(parent: PathBuf) -> Result<Self, SessionError> {
        std::fs::create_dir_all(&parent).map_err(io("mkdir", &parent))?;
        Ok(Self {
            parent,
            sessions: HashMap::new(),
            by_cgroup: HashMap::new(),
        })
    }

    /// Session directories left by a previous daemon: re-registered, so a
    /// restart keeps them observed.
    pub fn adopt_existing(&mut self, table: &mut dyn SessionTable) -> Vec<String> {
        let mut adopted = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.parent) else {
            return adopted;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !path.is_dir() || validate_id(&id).is_err() {
                continue;
            }
            let Ok(cgroup_id) = crate::cgroup::cgroup_id(&path) else {
                continue;
            };
            if table
                .insert(cgroup_id, table.current(cgroup_id).unwrap_or(0))
                .is_ok()
            {
                self.track(Session {
                    id: id.clone(),
                    cgroup: path,
                    cgroup_id,
                    policy: None,
                    workspace: None,
                    command: Vec::new(),
                    uid: 0,
                    started_unix_ns: now_unix_ns(),
                    conversation_id: None,
                    counts: HashMap::new(),
                });
                adopted.push(id);
            }
        }
        adopted
    }

    fn track(&mut self, s: Session) {
        self.by_cgroup.insert(s.cgroup_id, s.id.clone());
        self.sessions.insert(s.id.clone(), s);
    }

    /// Creates the cgroup and registers it. The caller moves processes in.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        table: &mut dyn SessionTable,
        id: Option<String>,
        policy: Option<String>,
        workspace: Option<String>,
        command: Vec<String>,
        uid: u32,
        value: u32,
    ) -> Result<&Session, SessionError> {
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        validate_id(&id)?;
        if self.sessions.contains_key(&id) {
            return Err(SessionError::Exists(id));
        }
        let dir = self.parent.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SessionError::Exists(id))
            }
            Err(e) => return Err(io("mkdir", &dir)(e)),
        }
        let cgroup_id = crate::cgroup::cgroup_id(&dir).map_err(io("stat", &dir))?;
        if let Err(e) = table.insert(cgroup_id, value) {
            let _ = std::fs::remove_dir(&dir);
            return Err(SessionError::Map(e));
        }
        self.track(Session {
            id: id.clone(),
            cgroup: dir,
            cgroup_id,
            policy,
            workspace,
            command,
            uid,
            started_unix_ns: now_unix_ns(),
            conversation_id: None,
            counts: HashMap::new(),
        });
        Ok(&self.sessions[&id])
    }

    /// Moves `pid` into the session's cgroup.
    pub fn enter(&self, id: &str, pid: u32) -> Result<(), SessionError> {
        let s = &self.sessions[id];
        let procs = s.cgroup.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io("write", &procs))
    }

    pub fn by_cgroup_id(&self, cgroup_id: u64) -> Option<&Session> {
        self.by_cgroup
            .get(&cgroup_id)
            .and_then(|id| self.sessions.get(id))
    }

    pub fn by_cgroup_id_mut(&mut self, cgroup_id: u64) -> Option<&mut Session> {
        let id = self.by_cgroup.get(&cgroup_id)?;
        self.sessions.get_mut(id)
    }

    /// The session containing cgroup directory `cgroup` (a path relative to
    /// the cgroup2 mount, as in /proc/PID/cgroup), if any.
    pub fn session_of_cgroup_path(&self, rel: &str, mount: &Path) -> Option<&Session> {
        let full = mount.join(rel.trim_start_matches('/'));
        let rest = full.strip_prefix(&self.parent).ok()?;
        let first = rest.components().next()?.as_os_str().to_str()?;
        self.sessions.get(first)
    }

    /// Sessions whose cgroup has no process left (`populated 0` in
    /// cgroup.events) or has vanished.
    pub fn empty_sessions(&self) -> Vec<String> {
        self.sessions
            .values()
            .filter(
                |s| match std::fs::read_to_string(s.cgroup.join("cgroup.events")) {
                    Ok(ev) => ev.lines().any(|l| l.trim() == "populated 0"),
                    Err(_) => true,
                },
            )
            .map(|s| s.id.clone())
            .collect()
    }

    /// Ends a session: unregisters it and removes its cgroup tree.
    pub fn end(&mut self, table: &mut dyn SessionTable, id: &str) -> Option<Session> {
        let s = self.sessions.remove(id)?;
        self.by_cgroup.remove(&s.cgroup_id);
        let _ = table.remove(s.cgroup_id);
        remove_tree(&s.cgroup);
        Some(s)
    }
}

/// Removes a cgroup directory and its child cgroups (depth first).
fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The cgroup v2 path of `pid` (relative to the mount), from
/// /proc/PID/cgroup's `0::` line.
pub fn cgroup_of_pid(pid: u32) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other(format!("pid {pid} has no cgroup v2 entry")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_validated() {
        for ok in ["a", "0193b3c2-7a1e-7c3d-9f00-123456789abc", "ci_job.42"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "x y", &"a".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    struct FakeTable(Vec<u64>);
    impl SessionTable for FakeTable {
        fn insert(&mut self, id: u64, _value: u32) -> Result<(), String> {
            self.0.push(id);
            Ok(())
        }
        fn current(&self, _id: u64) -> Option<u32> {
            None
        }
        fn remove(&mut self, id: u64) -> Result<(), String> {
            self.0.retain(|x| *x != id);
            Ok(())
        }
    }

    /// On a plain directory (not cgroupfs) the manager's bookkeeping still
    /// works: create, duplicate refusal, lookup, end.
    #[test]
    fn create_lookup_end_on_a_plain_directory() {
        let dir = std::env::temp_dir().join(format!("agentmon-sess-{}", rand::random::<u64>()));
        let mut m = Manager::new(dir.clone()).unwrap();
        let mut t = FakeTable(vec![]);
        let s = m
            .create(
                &mut t,
                Some("s1".into()),
                None,
                None,
                vec!["x".into()],
                0,
                0,
            )
            .unwrap()
            .clone();
        assert_eq!(t.0, vec![s.cgroup_id]);
        assert!(matches!(
            m.create(&mut t, Some("s1".into()), None, None, vec![], 0, 0),
            Err(SessionError::Exists(_))
        ));
        assert!(matches!(
            m.create(&mut t, Some("../x".into()), None, None, vec![], 0, 0),
            Err(SessionError::InvalidId(_))
        ));
        assert_eq!(m.by_cgroup_id(s.cgroup_id).unwrap().id, "s1");
        assert_eq!(
            m.session_of_cgroup_path("/x/s1/child", &dir.parent().unwrap().join("nope"))
                .map(|s| &s.id),
            None
        );
        let ended = m.end(&mut t, "s1").unwrap();
        assert_eq!(ended.id, "s1");
        assert!(t.0.is_empty());
        assert!(!dir.join("s1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
