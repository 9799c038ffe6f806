//! `cargo xtask package`: the Debian package, built by hand with
//! `dpkg-deb --build` (no cargo-deb, nothing to install).
//!
//! The tree: `/usr/bin/agentmon` (release, stripped, eBPF object embedded),
//! `/etc/agentmon/agentmon.toml` and `/etc/agentmon/policies/*.toml`
//! (conffiles), `/lib/systemd/system/agentmon.service`, man pages and
//! bash/zsh/fish completions generated from the CLI definition
//! (`agentmon generate-assets`), and the maintainer scripts in
//! `packaging/debian/`.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{
    build,
    util::{output, root, sh, Step},
};

pub const PACKAGE: &str = "agentmon";

/// Where the built .deb and its staging tree go.
pub fn out_dir() -> PathBuf {
    root().join("target/package")
}

/// Builds agentmon (release) and the .deb; returns the .deb's path.
pub fn run() -> anyhow::Result<PathBuf> {
    let bin = build::all(true)?;
    build_deb(&bin)
}

/// Conffiles: everything the package puts under /etc.
fn conffiles(tree: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![tree.join("etc")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(format!("/{}", p.strip_prefix(tree)?.display()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn install(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The newest `GLIBC_x.y` symbol version the binary needs.
fn glibc_requirement(bin: &Path) -> anyhow::Result<String> {
    let syms = output(Command::new("objdump").arg("-T").arg(bin))?;
    let mut best: Option<(u32, u32)> = None;
    for v in syms.split("GLIBC_").skip(1) {
        let v: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        let ver = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        best = best.max(Some(ver));
    }
    let (a, b) = best.context("the binary references no GLIBC symbol version")?;
    Ok(format!("{a}.{b}"))
}

pub fn build_deb(bin: &Path) -> anyhow::Result<PathBuf> {
    let step = Step::new("package: build the .deb");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out = out_dir();
    let tree = out.join(format!("{PACKAGE}_{version}_{arch}"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    fs::create_dir_all(&tree)?;
    let pkg = root().join("packaging");

    // The binary, without debug info (the embedded eBPF object is data and
    // survives stripping).
    let usr_bin = tree.join("usr/bin");
    fs::create_dir_all(&usr_bin)?;
    sh(Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(usr_bin.join("agentmon"))
        .arg(bin))?;
    fs::set_permissions(usr_bin.join("agentmon"), fs::Permissions::from_mode(0o755))?;

    // Configuration and policies.
    install(
        &pkg.join("agentmon.toml"),
        &tree.join("etc/agentmon/agentmon.toml"),
        0o644,
    )?;
    let mut rules: Vec<PathBuf> = fs::read_dir(root().join("rules"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    rules.sort();
    if rules.is_empty() {
        bail!("no policies in rules/");
    }
    for r in &rules {
        install(
            r,
            &tree
                .join("etc/agentmon/policies")
                .join(r.file_name().unwrap()),
            0o644,
        )?;
    }
    install(
        &pkg.join("agentmon.service"),
        &tree.join("lib/systemd/system/agentmon.service"),
        0o644,
    )?;

    // Man pages and completions, from the binary's own CLI definition.
    let gen = out.join("generated");
    if gen.exists() {
        fs::remove_dir_all(&gen)?;
    }
    output(Command::new(bin).arg("generate-assets").arg(&gen))?;
    let man1 = tree.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    for e in fs::read_dir(gen.join("man"))? {
        let p = e?.path();
        let dst = man1.join(format!("{}.gz", p.file_name().unwrap().to_string_lossy()));
        // -n: no name or time stamp in the gzip header (reproducible).
        let gz = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(&p)
            .output()
            .context("running gzip")?;
        if !gz.status.success() {
            bail!("gzip {} failed", p.display());
        }
        fs::write(&dst, gz.stdout)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644))?;
    }
    let comp = gen.join("completions");
    for (src, dst) in [
        (
            "agentmon.bash",
            "usr/share/bash-completion/completions/agentmon",
        ),
        ("_agentmon", "usr/share/zsh/vendor-completions/_agentmon"),
        (
            "agentmon.fish",
            "usr/share/fish/vendor_completions.d/agentmon.fish",
        ),
    ] {
        install(&comp.join(src), &tree.join(dst), 0o644)?;
    }
    let doc = tree.join("usr/share/doc/agentmon");
    fs::create_dir_all(&doc)?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: agentmon\n\nFiles: *\nLicense: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
    )?;
    // The store's directory (the unit's StateDirectory), owned by the
    // package so that dpkg -L shows it.
    fs::create_dir_all(tree.join("var/lib/agentmon"))?;
    fs::set_permissions(
        tree.join("var/lib/agentmon"),
        fs::Permissions::from_mode(0o700),
    )?;

    // Control files.
    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for s in ["postinst", "prerm", "postrm"] {
        install(&pkg.join("debian").join(s), &debian.join(s), 0o755)?;
    }
    let mut conf = String::new();
    for c in conffiles(&tree)? {
        writeln!(conf, "{c}")?;
    }
    fs::write(debian.join("conffiles"), conf)?;
    let installed_kb = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(&tree),
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_string();
    let glibc = glibc_requirement(bin)?;
    fs::write(
        debian.join("control"),
        format!(
            "Package: {PACKAGE}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: agentmon developers <agentmon@example.invalid>\n\
             Installed-Size: {installed_kb}\n\
             Depends: libc6 (>= {glibc}), libgcc-s1\n\
             Section: admin\n\
             Priority: optional\n\
             Description: kernel guardrails and flight recorder for AI coding agents\n \
             agentmon runs AI coding agent sessions (Codex CLI, Claude Code and the\n \
             like) in cgroup v2 sessions, records what they execute, open and connect\n \
             to with eBPF programs, and enforces policy in the kernel where the\n \
             kernel allows (BPF LSM, cgroup socket hooks).\n"
        ),
    )?;
    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let _ = fs::remove_file(&deb);
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-z6", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    step.done();
    eprintln!("package: {}", deb.display());
    Ok(deb)
}
