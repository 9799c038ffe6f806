//! The `package` test tier: the .deb in a Debian bookworm chroot.
//!
//! Builds the .deb, unpacks a cached debootstrap (minbase + systemd,
//! procps, man-db) into `target/package-test/root`, and, in a private mount
//! namespace of its own (so no mount can outlive the test or leak to the
//! host), bind-mounts /proc, /sys (with the host's cgroup mounts), /dev and
//! a fresh bpffs instance into it. Then: `dpkg -i`, the files in
//! `dpkg -L`, `systemd-analyze verify` of the unit, the daemon started as
//! the unit's ExecStart, sessions, `agentmon events/summary/status`, an
//! upgrade that keeps the pin directory, the CI action's script, `dpkg -r`
//! (pins, config and store stay) and `dpkg --purge` (all gone, session
//! cgroups included).

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};

use crate::util::{is_root, output, root, sh, Step};

/// Debian release and packages of the cached base system.
const SUITE: &str = "bookworm";
const INCLUDE: &str = "systemd,procps,man-db";
const MIRROR: &str = "http://deb.debian.org/debian";

/// `~/.cache/agentmon/debootstrap/` (or `$AGENTMON_CACHE/debootstrap`).
fn cache_dir() -> PathBuf {
    std::env::var_os("AGENTMON_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentmon")
        })
        .join("debootstrap")
}

fn base_tarball() -> PathBuf {
    cache_dir().join(format!("{SUITE}-minbase-{}.tar", INCLUDE.replace(',', "+")))
}

fn work_dir() -> PathBuf {
    root().join("target/package-test")
}

/// On CI the tier must run; elsewhere a missing prerequisite is a skip.
fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// The tier, from `cargo xtask test`: builds the .deb from `bin` and runs
/// the checks in a child process with a private mount namespace.
pub fn run(bin: &Path) -> anyhow::Result<()> {
    if !is_root() {
        eprintln!(
            "skip: the package tier needs root (debootstrap, chroot, mounts, eBPF); rerun as root"
        );
        return Ok(());
    }
    let deb = crate::package::build_deb(bin)?;
    let base = match ensure_base() {
        Ok(b) => b,
        Err(e) if !on_ci() => {
            eprintln!("skip: the package tier has no Debian base system: {e:#}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // The checks run in `xtask package-test-inner` under unshare(1): every
    // mount is made in that private namespace and dies with it.
    let exe = std::env::current_exe()?;
    sh(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .arg("package-test-inner")
        .arg("--deb")
        .arg(&deb)
        .arg("--base")
        .arg(&base))
}

/// Creates the base tarball with debootstrap when it is not cached.
fn ensure_base() -> anyhow::Result<PathBuf> {
    let tar = base_tarball();
    if tar.exists() {
        eprintln!("package: base system cached at {}", tar.display());
        return Ok(tar);
    }
    let step = Step::new(format!(
        "package: debootstrap --variant=minbase {SUITE} (+{INCLUDE}), once"
    ));
    let dir = cache_dir();
    fs::create_dir_all(&dir)?;
    let tmp_root = dir.join(format!("{SUITE}-building"));
    if tmp_root.exists() {
        fs::remove_dir_all(&tmp_root)?;
    }
    sh(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&tmp_root)
        .arg(MIRROR))
    .context("debootstrap failed (is the Debian mirror reachable?)")?;
    // Only an empty apt cache goes into the tarball.
    let _ = fs::remove_dir_all(tmp_root.join("var/cache/apt/archives"));
    fs::create_dir_all(tmp_root.join("var/cache/apt/archives/partial"))?;
    let part = tar.with_extension("tar.part");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&tmp_root)
        .args(["--numeric-owner", "-cf"])
        .arg(&part)
        .arg("."))?;
    fs::rename(&part, &tar)?;
    fs::remove_dir_all(&tmp_root)?;
    step.done();
    Ok(tar)
}

/// Arguments of the hidden `xtask package-test-inner`.
#[derive(clap::Args)]
pub struct InnerArgs {
    #[arg(long)]
    deb: PathBuf,
    #[arg(long)]
    base: PathBuf,
}

/// Unmounts what it mounted, in reverse order, whatever happens.
struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(target)?;
        sh(Command::new("mount").args(args).arg(target))?;
        self.points.push(target.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.points.iter().rev() {
            let ok = Command::new("umount")
                .arg("-R")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Lazily, so that a busy mount does not stay behind.
                let _ = Command::new("umount").arg("-Rl").arg(p).status();
            }
        }
    }
}

/// Kills the daemon if a check failed while it ran.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the daemon's orderly shutdown.
            sh(Command::new("kill").arg("-TERM").arg(c.id().to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(st) = c.try_wait()? {
                    ensure!(
                        st.success(),
                        "daemon exited with {st} on SIGTERM; log:\n{}",
                        self.log_text()
                    );
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("daemon did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Chroot {
    root: PathBuf,
}

impl Chroot {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Runs a command in the chroot and returns its stdout; stderr is
    /// shown.
    fn out(&self, args: &[&str]) -> anyhow::Result<String> {
        output(self.cmd(args).stderr(Stdio::inherit()))
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<()> {
        sh(&mut self.cmd(args))
    }

    /// A path inside the chroot, seen from outside.
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// The cgroup2 mount of the host (as /proc/self/mounts names it).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let m = fs::read_to_string("/proc/self/mounts")?;
    m.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount on this host")
}

/// What the package must install (subset checked against `dpkg -L`).
const EXPECTED_FILES: &[&str] = &[
    "/usr/bin/agentmon",
    "/etc/agentmon/agentmon.toml",
    "/etc/agentmon/policies/default.toml",
    "/etc/agentmon/policies/ci-strict.toml",
    "/lib/systemd/system/agentmon.service",
    "/usr/share/man/man1/agentmon.1.gz",
    "/usr/share/man/man1/agentmon-run.1.gz",
    "/usr/share/man/man1/agentmon-summary.1.gz",
    "/usr/share/bash-completion/completions/agentmon",
    "/usr/share/zsh/vendor-completions/_agentmon",
    "/usr/share/fish/vendor_completions.d/agentmon.fish",
    "/var/lib/agentmon",
];

pub fn inner(args: InnerArgs) -> anyhow::Result<()> {
    let work = work_dir();
    let rootfs = work.join("root");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    fs::create_dir_all(&rootfs)?;
    let step = Step::new("package: unpack the base system");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-xpf"])
        .arg(&args.base))?;
    step.done();
    let ch = Chroot {
        root: rootfs.clone(),
    };
    let mut mounts = Mounts { points: vec![] };
    mounts.mount(&["--bind", "/proc"], &ch.path("/proc"))?;
    mounts.mount(&["--rbind", "/sys"], &ch.path("/sys"))?;
    // A bpffs instance of the test's own: the package's purge removes
    // /sys/fs/bpf/agentmon, which must not touch the host's pins.
    mounts.mount(&["-t", "bpf", "bpf"], &ch.path("/sys/fs/bpf"))?;
    mounts.mount(&["--rbind", "/dev"], &ch.path("/dev"))?;
    mounts.mount(&["-t", "tmpfs", "tmpfs"], &ch.path("/run"))?;
    mounts.mount(&["-t", "tmpfs", "tmpfs"], &ch.path("/tmp"))?;
    let r = checks(&ch, &args.deb);
    drop(mounts);
    r
}

fn checks(ch: &Chroot, deb: &Path) -> anyhow::Result<()> {
    let step = Step::new("package: dpkg -i");
    fs::copy(deb, ch.path("/tmp/agentmon.deb"))?;
    ch.ok(&["dpkg", "-i", "/tmp/agentmon.deb"])?;
    let listed = ch.out(&["dpkg", "-L", "agentmon"])?;
    for f in EXPECTED_FILES {
        ensure!(
            listed.lines().any(|l| l == *f),
            "dpkg -L agentmon lacks {f}:\n{listed}"
        );
        ensure!(ch.path(f).exists(), "{f} is listed but not installed");
    }
    let conffiles = ch.out(&["dpkg-query", "-W", "-f=${Conffiles}", "agentmon"])?;
    for f in [
        "/etc/agentmon/agentmon.toml",
        "/etc/agentmon/policies/default.toml",
    ] {
        ensure!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    // postinst without a running systemd: enabled for the next boot.
    // A symlink to an absolute path inside the chroot: look at the link.
    ensure!(
        ch.path("/etc/systemd/system/multi-user.target.wants/agentmon.service")
            .symlink_metadata()
            .is_ok(),
        "postinst did not enable agentmon.service"
    );
    let man = ch.out(&["man", "-w", "agentmon-summary"])?;
    ensure!(man.contains("agentmon-summary.1.gz"), "man -w: {man}");
    step.done();

    let step = Step::new("package: systemd-analyze verify");
    let v = ch
        .cmd(&[
            "systemd-analyze",
            "verify",
            "/lib/systemd/system/agentmon.service",
        ])
        .output()?;
    let verify_text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    ensure!(
        v.status.success() && !verify_text.contains("agentmon.service:"),
        "systemd-analyze verify: {}\n{verify_text}",
        v.status
    );
    step.done();

    // The daemon as the unit starts it: its ExecStart, with root's
    // capabilities cut to the unit's bounding set.
    let unit = fs::read_to_string(ch.path("/lib/systemd/system/agentmon.service"))?;
    let step = Step::new("package: the daemon as the unit runs it, and sessions");
    let cg = cgroup2_mount()?;
    let parent = cg.join("agentmon");
    let parent_existed = parent.exists();
    let mut daemon = match start_daemon(ch, &unit) {
        Ok(d) => d,
        // A policy that enforces file rules needs BPF LSM; without it the
        // shipped configuration must stop the daemon at start, saying so.
        // Then the test goes on with the audit fallback.
        Err(e) if format!("{e:#}").contains("has no BPF LSM") => {
            eprintln!(
                "package: as it should on a kernel without BPF LSM, the daemon refused to start:\n{e:#}\n\
                 package: continuing with `[enforcement] fallback = \"audit\"`"
            );
            let conf = ch.path("/etc/agentmon/agentmon.toml");
            let text = fs::read_to_string(&conf)?;
            fs::write(
                &conf,
                format!("{text}\n[enforcement]\nfallback = \"audit\"\n"),
            )?;
            start_daemon(ch, &unit)?
        }
        Err(e) => return Err(e),
    };
    // Pins: the daemon pins its enforcement under /sys/fs/bpf/agentmon
    // when it has any; the directory stands in for them otherwise, so the
    // remove/purge checks below always have something to check.
    let pins = ch.path("/sys/fs/bpf/agentmon");
    if pins.exists() {
        eprintln!(
            "package: pinned by the daemon: {}",
            output(Command::new("find").arg(&pins).args(["-mindepth", "1"]))?
                .replace(&*pins.to_string_lossy(), "")
                .replace('\n', " ")
        );
    } else {
        fs::create_dir_all(&pins)?;
        eprintln!("package: the daemon pinned nothing; checking purge with an empty pin directory");
    }
    let sessions = sessions(ch, &mut daemon);
    if let Err(e) = sessions {
        return Err(e.context(format!("daemon log:\n{}", daemon.log_text())));
    }
    step.done();
    package_lifecycle(ch, &pins, &parent, parent_existed)
}

/// Sessions against the running daemon, then its orderly stop.
fn sessions(ch: &Chroot, daemon: &mut Daemon) -> anyhow::Result<()> {
    ch.ok(&["agentmon", "run", "--quiet", "--", "/bin/true"])?;
    let code = ch
        .cmd(&[
            "agentmon", "run", "--quiet", "--", "/bin/sh", "-c", "exit 7",
        ])
        .status()?;
    ensure!(
        code.code() == Some(7),
        "exit code not passed through: {code}"
    );
    ch.ok(&[
        "agentmon",
        "run",
        "--quiet",
        "--session",
        "pkg-test-1",
        "--",
        "/bin/sh",
        "-c",
        "/bin/ls / >/dev/null && /bin/cat /etc/debian_version >/dev/null",
    ])?;
    let summary = ch.out(&[
        "agentmon",
        "summary",
        "--session",
        "pkg-test-1",
        "--wait",
        "15s",
        "--json",
    ])?;
    let s: serde_json::Value = serde_json::from_str(&summary)?;
    ensure!(s["ended"] == true, "session did not end: {summary}");
    ensure!(
        s["processes"].as_u64() >= Some(3),
        "expected sh, ls and cat: {summary}"
    );
    let events = ch.out(&[
        "agentmon",
        "events",
        "--session",
        "pkg-test-1",
        "--kind",
        "exec",
    ])?;
    ensure!(
        events.contains("/bin/ls") || events.contains("/usr/bin/ls"),
        "no exec of ls in the store:\n{events}"
    );
    let status = ch.out(&["agentmon", "status"])?;
    ensure!(!status.is_empty(), "agentmon status printed nothing");
    eprintln!(
        "package: session pkg-test-1: {}",
        summary.replace('\n', " ")
    );
    daemon.stop()
}

/// Upgrade, the CI script, remove and purge.
fn package_lifecycle(
    ch: &Chroot,
    pins: &Path,
    parent: &Path,
    parent_existed: bool,
) -> anyhow::Result<()> {
    let step = Step::new("package: upgrade (dpkg -i again) keeps pins and config edits");
    let conf = ch.path("/etc/agentmon/agentmon.toml");
    let edited = format!("{}\n# local edit\n", fs::read_to_string(&conf)?.trim_end());
    fs::write(&conf, &edited)?;
    ch.ok(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "dpkg",
        "--force-confold",
        "-i",
        "/tmp/agentmon.deb",
    ])?;
    ensure!(pins.exists(), "upgrade removed {}", pins.display());
    ensure!(
        fs::read_to_string(&conf)? == edited,
        "upgrade overwrote the edited conffile"
    );
    step.done();

    let step = Step::new("package: the CI action's script");
    ci_action_script(ch)?;
    step.done();

    let step = Step::new("package: dpkg -r keeps pins, config and store; purge removes all");
    ch.ok(&["dpkg", "-r", "agentmon"])?;
    ensure!(
        !ch.path("/usr/bin/agentmon").exists(),
        "dpkg -r left the binary"
    );
    ensure!(pins.exists(), "dpkg -r removed the pins");
    ensure!(conf.exists(), "dpkg -r removed the config");
    ensure!(
        ch.path("/var/lib/agentmon/events.db").exists(),
        "dpkg -r removed the store"
    );
    // A leftover empty session cgroup, as a crashed daemon would leave it.
    let leftover = parent.join("pkg-test-leftover");
    fs::create_dir_all(&leftover)?;
    ch.ok(&["dpkg", "--purge", "agentmon"])?;
    for gone in [
        "/etc/agentmon",
        "/var/lib/agentmon",
        "/sys/fs/bpf/agentmon",
        "/lib/systemd/system/agentmon.service",
        "/etc/systemd/system/multi-user.target.wants/agentmon.service",
    ] {
        ensure!(
            ch.path(gone).symlink_metadata().is_err(),
            "{gone} survived purge"
        );
    }
    ensure!(!leftover.exists(), "purge left {}", leftover.display());
    if !parent_existed {
        ensure!(!parent.exists(), "purge left {}", parent.display());
    }
    let st = ch.cmd(&["dpkg-query", "-W", "agentmon"]).output()?;
    ensure!(
        !st.status.success(),
        "agentmon still known to dpkg after purge"
    );
    step.done();
    Ok(())
}

/// `ExecStart=` of the unit (the one line, without `-`/`@` prefixes).
fn unit_exec_start(unit: &str) -> anyhow::Result<String> {
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .collect();
    match lines.as_slice() {
        [one] => Ok(one.trim_start_matches(['-', '@', '+', '!']).to_string()),
        _ => bail!("expected one ExecStart= in the unit, found {lines:?}"),
    }
}

/// `setpriv` arguments that give root only the unit's
/// `CapabilityBoundingSet=` (and `NoNewPrivileges=`), as systemd would.
fn unit_privileges(unit: &str) -> anyhow::Result<Vec<String>> {
    let value = |key: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .next_back()
            .map(str::trim)
    };
    let caps = value("CapabilityBoundingSet=").context("the unit sets no CapabilityBoundingSet")?;
    let mut set = String::from("-all");
    for c in caps.split_whitespace() {
        let c = c
            .strip_prefix("CAP_")
            .with_context(|| format!("capability {c:?} lacks CAP_"))?;
        set.push_str(&format!(",+{}", c.to_ascii_lowercase()));
    }
    let mut args = vec!["setpriv".to_string(), format!("--bounding-set={set}")];
    if value("NoNewPrivileges=") == Some("yes") {
        args.push("--no-new-privs".into());
    }
    args.push("--".into());
    Ok(args)
}

fn start_daemon(ch: &Chroot, unit: &str) -> anyhow::Result<Daemon> {
    let exec_start = unit_exec_start(unit)?;
    let mut argv = unit_privileges(unit)?;
    argv.extend(exec_start.split_whitespace().map(str::to_string));
    eprintln!("package: starting {}", argv.join(" "));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = ch.path("/tmp/agentmon-daemon.log");
    let f = fs::File::create(&log)?;
    // RuntimeDirectory= and StateDirectory= would be made by systemd.
    fs::create_dir_all(ch.path("/run/agentmon"))?;
    let child = ch
        .cmd(&argv)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .context("starting the daemon in the chroot")?;
    let mut d = Daemon {
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = d.child.as_mut().unwrap().try_wait()? {
            bail!("daemon exited at start with {st}:\n{}", d.log_text());
        }
        if ch.path("/run/agentmon/agentmon.sock").exists()
            && ch
                .cmd(&["agentmon", "status"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
        {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("daemon did not answer within 30 s:\n{}", d.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `packaging/github-action/agentmon-ci.sh` in the chroot as the
/// action would, outside GitHub: installs the .deb from a path, starts the
/// daemon (no systemd here: in the background), runs a command, and writes
/// the summary to the log, a step-summary file and JSON.
fn ci_action_script(ch: &Chroot) -> anyhow::Result<()> {
    let script = root().join("packaging/github-action/agentmon-ci.sh");
    fs::copy(&script, ch.path("/tmp/agentmon-ci.sh"))?;
    fs::create_dir_all(ch.path("/tmp/ws"))?;
    let mut c = ch.cmd(&["/bin/bash", "-c", "cd /tmp/ws && /tmp/agentmon-ci.sh"]);
    c.env("AGENTMON_PACKAGE", "/tmp/agentmon.deb")
        .env(
            "AGENTMON_RUN",
            "echo hello >out.txt && /bin/cat out.txt && exit 0",
        )
        .env("AGENTMON_POLICY", "default")
        .env("AGENTMON_SUMMARY_JSON", "/tmp/ws/summary.json")
        .env("AGENTMON_FAIL_ON_DENY", "true")
        .env("AGENTMON_DAEMON_ARGS", "--scope sessions")
        .env("GITHUB_STEP_SUMMARY", "/tmp/step-summary.md")
        .env("GITHUB_OUTPUT", "/tmp/github-output");
    let out = c.stderr(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut out = out;
    let mut stderr = String::new();
    out.stderr.take().unwrap().read_to_string(&mut stderr)?;
    let st = out.wait()?;
    eprint!("{stderr}");
    ensure!(st.success(), "agentmon-ci.sh failed with {st}");
    for want in [
        "agentmon session ci-",
        "processes:",
        "files:",
        "connections:",
        "losses:",
    ] {
        ensure!(stderr.contains(want), "job log lacks {want:?}");
    }
    let json = fs::read_to_string(ch.path("/tmp/ws/summary.json"))?;
    let s: serde_json::Value = serde_json::from_str(&json)?;
    ensure!(s["ended"] == true, "{json}");
    ensure!(s["processes"].as_u64() >= Some(2), "bash and cat: {json}");
    ensure!(s["files"].as_u64() >= Some(1), "out.txt: {json}");
    let md = fs::read_to_string(ch.path("/tmp/step-summary.md"))?;
    ensure!(md.contains("| processes |"), "step summary: {md}");
    let gh_out = fs::read_to_string(ch.path("/tmp/github-output"))?;
    ensure!(
        gh_out.contains("exit-code=0") && gh_out.contains("denied=0"),
        "{gh_out}"
    );
    ensure!(
        !ch.path("/run/agentmon/agentmon.sock").exists(),
        "the script left its daemon running"
    );
    // The command's exit status passes through.
    let st = ch
        .cmd(&["/bin/bash", "-c", "cd /tmp/ws && /tmp/agentmon-ci.sh"])
        .env("AGENTMON_PACKAGE", "/tmp/agentmon.deb")
        .env("AGENTMON_RUN", "exit 5")
        .env("AGENTMON_SUMMARY_JSON", "/tmp/ws/summary2.json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(st.code() == Some(5), "exit status not passed through: {st}");
    // fail-on-deny: ci-strict denies connections by default (cgroup
    // connect4, enforced on every kernel); the command ignores the failed
    // connect, so the step fails only because of the denial.
    let st = ch
        .cmd(&["/bin/bash", "-c", "cd /tmp/ws && /tmp/agentmon-ci.sh"])
        .env("AGENTMON_PACKAGE", "/tmp/agentmon.deb")
        .env(
            "AGENTMON_RUN",
            "(exec 3<>/dev/tcp/192.0.2.1/80) 2>/dev/null; exit 0",
        )
        .env("AGENTMON_POLICY", "ci-strict")
        .env("AGENTMON_FAIL_ON_DENY", "true")
        .env("AGENTMON_SUMMARY_JSON", "/tmp/ws/summary3.json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    let json = fs::read_to_string(ch.path("/tmp/ws/summary3.json"))?;
    ensure!(
        st.code() == Some(3),
        "fail-on-deny did not fail the step: {st}; {json}"
    );
    let s: serde_json::Value = serde_json::from_str(&json)?;
    ensure!(s["connections_denied"].as_u64() >= Some(1), "{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_is_read_from_the_shipped_unit() {
        let unit = fs::read_to_string(root().join("packaging/agentmon.service")).unwrap();
        assert_eq!(
            unit_exec_start(&unit).unwrap(),
            "/usr/bin/agentmon daemon --config /etc/agentmon/agentmon.toml"
        );
        assert!(unit_exec_start("[Service]\n").is_err());
        let p = unit_privileges(&unit).unwrap();
        assert_eq!(p[0], "setpriv");
        assert!(p[1].starts_with("--bounding-set=-all,+bpf,"), "{p:?}");
        assert!(p.contains(&"--no-new-privs".to_string()), "{p:?}");
        assert!(!p[1].contains("sys_resource"), "{p:?}");
    }
}
