//! Enforcement with BPF LSM (VM tier): a scripted agent session tries every
//! access the policy forbids; each is denied with the right errno and a
//! denial event naming the rule and the policy generation. The same script
//! succeeds outside the session, and in audit mode inside one.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agentmon_tests::{marker, Daemon};
use serde_json::Value;

use crate::require_lsm;

const T: Duration = Duration::from_secs(120);

/// The policy of these tests, in `mode` ("enforce" or "audit").
pub fn policy_file(dir: &Path, mode: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("policy-{mode}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"mode = "{mode}"
[permissions.filesystem]
deny_read = ["**/.env"]
[sandbox_workspace_write]
writable_roots = ["{{workspace}}"]
protected = [".git", ".codex", ".agents"]
[exec]
deny = ["**/denied-bin"]
[network]
default = "allow"
deny = ["127.0.0.2/32"]
"#
        ),
    )
    .unwrap();
    p
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup `{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A workspace with secrets, a git repository and a binary to deny,
/// prepared outside every session.
pub fn workspace(tag: &str) -> PathBuf {
    let w = std::env::temp_dir().join(format!("agentmon-ws-{tag}"));
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(w.join("sub/dir/deep/a/b/c")).unwrap();
    std::fs::create_dir_all(w.join("late")).unwrap();
    std::fs::write(w.join(".env"), "TOKEN=top-secret\n").unwrap();
    std::fs::write(w.join("sub/dir/deep/a/b/c/.env"), "DEEP=secret\n").unwrap();
    std::fs::write(w.join("README"), "hello\n").unwrap();
    std::os::unix::fs::symlink(".env", w.join("envlink")).unwrap();
    std::fs::hard_link(w.join(".env"), w.join("envhard")).unwrap();
    std::fs::copy("/bin/true", w.join("denied-bin")).unwrap();
    sh(
        &w,
        "git init -q . && git -c user.name=t -c user.email=t@t add README && \
         git -c user.name=t -c user.email=t@t commit -q -m init",
    );
    w.canonicalize().unwrap()
}

/// The agent script: one `STEP name rc=N err=...` line per action.
pub fn script(port: u16) -> String {
    format!(
        r#"
step() {{ name=$1; shift; out=$("$@" 2>&1); rc=$?; printf 'STEP %s rc=%s err=%s\n' "$name" "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; }}
step read_hardlink cat envhard
step read_env cat .env
step read_deep cat sub/dir/deep/a/b/c/.env
step write_late sh -c 'echo LATE=1 > late/.env'
step read_late cat late/.env
step read_symlink cat envlink
step git_status git status --porcelain
step git_log git log --oneline
step link_secret ln .env envhard2
step append_git_config sh -c 'echo x >> .git/config'
step mv_head mv .git/HEAD "$TMPDIR_OUT/HEAD"
step rm_objects rm -rf .git/objects
step symlink_in_git ln -s / .git/x
step chmod_git_config chmod 777 .git/config
step truncate_index truncate -s0 .git/index
step exec_denied ./denied-bin
step connect_denied bash -c 'exec 3<>/dev/tcp/127.0.0.2/{port}'
"#
    )
}

/// Runs the script in `w`, inside a session (policy given) or outside.
fn run_script(
    d: Option<(&Daemon, &str, &Path)>,
    w: &Path,
    port: u16,
) -> BTreeMap<String, (i32, String)> {
    let out_dir = w.with_extension("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut c = match d {
        Some((d, id, policy)) => {
            let mut c = d.cli();
            c.args(["run", "-q", "--session", id, "--policy"])
                .arg(policy)
                .arg("--workspace")
                .arg(w)
                .args(["--", "bash", "-c"]);
            c
        }
        None => {
            let mut c = Command::new("bash");
            c.arg("-c");
            c
        }
    };
    let out = c
        .arg(script(port))
        .current_dir(w)
        .env("TMPDIR_OUT", &out_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut steps = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("STEP ") else {
            continue;
        };
        let (name, rest) = rest.split_once(" rc=").unwrap();
        let (rc, err) = rest.split_once(" err=").unwrap();
        steps.insert(name.to_string(), (rc.parse().unwrap(), err.to_string()));
    }
    assert_eq!(
        steps.len(),
        17,
        "the script did not run to the end: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    steps
}

/// (step, access, path relative to the workspace, errno text) of every
/// action the policy denies.
const DENIED: &[(&str, &str, &str, &str)] = &[
    ("read_hardlink", "read", "envhard", "Permission denied"),
    ("read_env", "read", ".env", "Permission denied"),
    (
        "read_deep",
        "read",
        "sub/dir/deep/a/b/c/.env",
        "Permission denied",
    ),
    ("read_late", "read", "late/.env", "Permission denied"),
    ("read_symlink", "read", ".env", "Permission denied"),
    ("link_secret", "link_source", ".env", "Permission denied"),
    (
        "append_git_config",
        "write",
        ".git/config",
        "Permission denied",
    ),
    ("mv_head", "*", ".git/HEAD", "Permission denied"),
    ("rm_objects", "*", ".git/objects", "Permission denied"),
    ("symlink_in_git", "symlink", ".git/x", "Permission denied"),
    (
        "chmod_git_config",
        "setattr",
        ".git/config",
        "Permission denied",
    ),
    ("truncate_index", "write", ".git/index", "Permission denied"),
    ("exec_denied", "exec", "denied-bin", "Permission denied"),
];

fn policy_records<'a>(d: &'a Daemon, id: &str) -> Vec<&'a Value> {
    d.seen
        .iter()
        .filter(|v| v["session_id"] == id && v["kind"] == "policy")
        .collect()
}

fn find_record<'a>(recs: &[&'a Value], access: &str, path: &str) -> Option<&'a Value> {
    recs.iter().copied().find(|r| {
        (access == "*" || r["access"] == access)
            && r["path"]
                .as_str()
                .is_some_and(|p| p == path || p.starts_with(&format!("{path}/")))
    })
}

#[test]
fn enforce_denies_each_scripted_action_and_allows_them_outside() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("enf");
    let w = workspace(&m);
    let outside = workspace(&format!("{m}-out"));
    let policy = policy_file(&w.with_extension("pol"), "enforce");
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let id = format!("{m}-s");
    let steps = run_script(Some((&d, &id, &policy)), &w, port);
    d.wait_session_end(&id, T);
    let recs = policy_records(&d, &id);
    for (step, access, rel, errno) in DENIED {
        let (rc, err) = &steps[*step];
        assert_ne!(*rc, 0, "{step} was not denied: {err}");
        assert!(
            err.contains(errno),
            "{step}: expected {errno:?}, got {err:?}"
        );
        let path = format!("{}/{rel}", w.display());
        let r = find_record(&recs, access, &path).unwrap_or_else(|| {
            panic!("no denial record for {step} ({access} {path}); records: {recs:#?}")
        });
        assert_eq!(r["decision"], "denied", "{r}");
        assert_eq!(r["ret"], -13, "{r}");
        assert!(r["policy_generation"].as_u64().unwrap() > 0, "{r}");
        assert!(r["rule"].is_string(), "denial without a rule: {r}");
    }
    let deny_env = find_record(&recs, "read", &format!("{}/.env", w.display())).unwrap();
    assert_eq!(
        deny_env["rule"], "permissions.filesystem.deny_read: **/.env",
        "{deny_env}"
    );
    assert_eq!(
        find_record(&recs, "read", &format!("{}/envhard", w.display())).unwrap()["reason"],
        "inode"
    );
    // Network: EPERM from the cgroup hook, with the rule.
    let (rc, err) = &steps["connect_denied"];
    assert_ne!(*rc, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    let net = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "net_connect" && v["port"] == port)
        .expect("net_connect record");
    assert_eq!(net["decision"], "denied");
    assert_eq!(net["rule"], "network.deny: 127.0.0.2/32");
    // Writes that must not have happened.
    assert!(w.join(".git/HEAD").exists());
    assert!(w.join(".git/objects").exists());
    assert!(!w.join(".git/x").exists());
    assert!(!w.join("envhard2").exists());
    assert!(std::fs::metadata(w.join(".git/index")).unwrap().len() > 0);
    // Reads of the repository still work.
    for ok in ["git_status", "git_log", "write_late"] {
        assert_eq!(
            steps[ok].0, 0,
            "{ok} failed inside the session: {}",
            steps[ok].1
        );
    }
    assert!(
        steps["git_log"].1.contains("init"),
        "{:?}",
        steps["git_log"]
    );

    // Outside the session every action succeeds.
    let steps = run_script(None, &outside, port);
    for (name, (rc, err)) in &steps {
        assert_eq!(*rc, 0, "{name} failed outside the session: {err}");
    }
    drop(listener);
}

#[test]
fn audit_mode_allows_everything_and_reports_would_deny() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("aud");
    let w = workspace(&m);
    let policy = policy_file(&w.with_extension("pol"), "audit");
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = format!("{m}-s");
    let steps = run_script(Some((&d, &id, &policy)), &w, port);
    d.wait_session_end(&id, T);
    for (name, (rc, err)) in &steps {
        assert_eq!(*rc, 0, "{name} failed in audit mode: {err}");
    }
    let recs = policy_records(&d, &id);
    for (step, access, rel, _) in DENIED {
        // The hard link was denied by identity in enforce mode; in audit
        // mode the first read of .env is what teaches the inode, and the
        // session-start scan registers it too.
        let path = format!("{}/{rel}", w.display());
        let r = find_record(&recs, access, &path)
            .unwrap_or_else(|| panic!("no would_deny record for {step}; records: {recs:#?}"));
        assert_eq!(r["decision"], "would_deny", "{r}");
        assert_eq!(r["ret"], 0, "{r}");
    }
    let net = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "net_connect" && v["port"] == port)
        .expect("net_connect record");
    assert_eq!(net["decision"], "would_deny");
}
