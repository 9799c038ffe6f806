//! The bypasses the LSM prototype found, each attempted by a session
//! process and each closed: a denied file unlinked while open elsewhere,
//! a path longer than 4,096 bytes (fail closed), an open from a child
//! cgroup, an io_uring `IORING_OP_OPENAT`, and path aliasing from a user
//! and mount namespace of the session's own (chroot, bind mount). The same
//! attempts outside the session succeed, so each check can fail.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentmon_tests::{marker, Daemon};

use crate::{
    actor,
    enforce::{policy_file, workspace},
    require_lsm,
};

const T: Duration = Duration::from_secs(120);
/// One path component of the long-path test (255 is NAME_MAX).
const LONG_NAME_LEN: usize = 200;
/// Components: 22 * 201 bytes > 4,096.
const LONG_DEPTH: usize = 22;

fn prepare(w: &Path) -> std::process::Child {
    std::fs::create_dir_all(w.join("del")).unwrap();
    std::fs::write(w.join("del/.env"), "DELETED=secret\n").unwrap();
    std::fs::create_dir_all(w.join("long")).unwrap();
    let out = Command::new(actor())
        .args(["deep-open"])
        .arg(w.join("long"))
        .arg("d".repeat(LONG_NAME_LEN))
        .arg(LONG_DEPTH.to_string())
        .arg("f")
        .env("AGENTMON_CREATE", "1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result ok"),
        "creating the long path: {out:?}"
    );
    std::fs::write(w.with_extension("target"), "").unwrap();
    // Holds del/.env open, then the file is unlinked: only /proc/PID/fd/3
    // still reaches it ("... (deleted)").
    let holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<del/.env; exec sleep 600")
        .current_dir(w)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let fd = format!("/proc/{}/fd/3", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    // fd 3 of the new child is first std's exec-error pipe (between fork
    // and exec): wait until it names the file.
    let holds = || {
        std::fs::read_link(&fd)
            .map(|t| t.ends_with("del/.env"))
            .unwrap_or(false)
    };
    while !holds() {
        assert!(Instant::now() < deadline, "holder did not open del/.env");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(w.join("del/.env")).unwrap();
    holder
}

fn script(w: &Path, holder: u32) -> String {
    let a = actor();
    let name = "d".repeat(LONG_NAME_LEN);
    let target = w.with_extension("target");
    format!(
        r#"
step() {{ name=$1; shift; out=$("$@" 2>&1); rc=$?; printf 'STEP %s rc=%s out=%s\n' "$name" "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; }}
step deleted cat /proc/{holder}/fd/3
step long_path {a} deep-open {w}/long {name} {LONG_DEPTH} f
step io_uring {a} uring-try {w}/.env
step chroot unshare -Ur {a} chroot-open {w} /.env
step bind_mount unshare -Urm {a} bind-open {w}/.env {target}
step child_cgroup sh -c 'if [ -n "$OUTSIDE" ]; then exec cat .env; fi; cg=$(awk '"'"'$3=="cgroup2"{{print $2; exit}}'"'"' /proc/self/mounts)$(sed -n "s/^0:://p" /proc/self/cgroup); mkdir -p "$cg/child" && echo $$ > "$cg/child/cgroup.procs" && exec cat .env'
"#,
        w = w.display(),
        target = target.display(),
    )
}

fn run(c: &mut Command, w: &Path, script: &str) -> BTreeMap<String, (i32, String)> {
    let out = c.arg(script).current_dir(w).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut steps = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("STEP ") {
            let (name, rest) = rest.split_once(" rc=").unwrap();
            let (rc, o) = rest.split_once(" out=").unwrap();
            steps.insert(name.to_string(), (rc.parse().unwrap(), o.to_string()));
        }
    }
    assert_eq!(
        steps.len(),
        6,
        "script incomplete: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    steps
}

fn denied(step: &(i32, String)) -> bool {
    step.1.contains("errno=13") || (step.0 != 0 && step.1.contains("Permission denied"))
}

#[test]
fn prototype_bypasses_are_closed() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("byp");
    let w = workspace(&m);
    let mut holder = prepare(&w);
    let policy = policy_file(&w.with_extension("pol"), "enforce");
    let id = format!("{m}-s");
    let mut c = d.cli();
    c.args(["run", "-q", "--session", &id, "--policy"])
        .arg(&policy)
        .arg("--workspace")
        .arg(&w)
        .args(["--", "bash", "-c"]);
    let steps = run(&mut c, &w, &script(&w, holder.id()));
    d.wait_session_end(&id, T);
    for (name, r) in &steps {
        assert!(denied(r), "{name} was not denied: {r:?}");
    }
    let recs: Vec<_> = d
        .seen
        .iter()
        .filter(|v| v["session_id"] == id.as_str() && v["kind"] == "policy")
        .collect();
    let env = format!("{}/.env", w.display());
    let has = |path: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        recs.iter().any(|r| r["path"] == path && pred(r))
    };
    assert!(
        has(&format!("{}/del/.env", w.display()), &|_| true),
        "no denial naming the deleted file: {recs:#?}"
    );
    assert!(
        recs.iter().any(|r| r["reason"] == "path_unresolved"),
        "no fail-closed denial for the long path: {recs:#?}"
    );
    // The child cgroup's denial carries the child's cgroup id and the
    // session's; the aliased opens name the identity path.
    assert!(
        has(&env, &|r| r["cgroup_id"] != r["session_cgroup_id"]),
        "no denial from the child cgroup: {recs:#?}"
    );
    let env_denials = recs.iter().filter(|r| r["path"] == env.as_str()).count();
    assert!(
        env_denials >= 4,
        "io_uring, chroot, bind mount and child cgroup should each be denied on {env}: {recs:#?}"
    );

    // Outside the session the same attempts succeed.
    let w2 = workspace(&format!("{m}-out"));
    let mut holder2 = prepare(&w2);
    let mut c = Command::new("bash");
    // Outside, the child-cgroup step only reads the file.
    c.env("OUTSIDE", "1").arg("-c");
    let steps = run(&mut c, &w2, &script(&w2, holder2.id()));
    for (name, (rc, out)) in &steps {
        assert_eq!(*rc, 0, "{name} failed outside the session: {out}");
        assert!(
            !out.contains("Permission denied"),
            "{name} failed outside: {out}"
        );
        assert!(
            !out.contains("errno="),
            "{name} failed outside the session: {out}"
        );
    }
    let _ = holder.kill();
    let _ = holder2.kill();
    let _ = holder.wait();
    let _ = holder2.wait();
}

/// A root process in a session cannot move itself (or anything) into a
/// cgroup outside its session, even in a session without a policy; child
/// cgroups of the session stay allowed (see above).
#[test]
fn root_session_process_cannot_leave_its_session() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("esc");
    let id = format!("{m}-s");
    let script = r#"cg=$(awk '$3=="cgroup2"{print $2; exit}' /proc/self/mounts); (echo $$ > "$cg/cgroup.procs") 2>&1; echo "rc=$?"; echo "now=$(sed -n 's/^0:://p' /proc/self/cgroup)""#;
    let out = d
        .cli()
        .args(["run", "-q", "--session", &id, "--", "sh", "-c", script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    let now = text
        .lines()
        .find_map(|l| l.strip_prefix("now="))
        .unwrap_or("");
    assert!(now.contains(&id), "the process left its session: {text}");
    d.wait_session_end(&id, T);
    let rec = d
        .seen
        .iter()
        .find(|v| v["kind"] == "policy" && v["session_id"] == id.as_str())
        .expect("a denial record for the escape");
    assert_eq!(rec["reason"], "session_escape");
    assert_eq!(rec["decision"], "denied");
    assert!(
        rec["path"].as_str().unwrap().ends_with("/cgroup.procs"),
        "{rec}"
    );

    // The same write outside every session works (this process's cgroup
    // is already the root here, so it changes nothing).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rc=0"), "{text}");
}
