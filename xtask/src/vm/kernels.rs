//! The kernels under test (`tests/kernels.toml`): resolving Debian
//! metapackages, downloading with apt, caching kernel + modules under
//! `target/vm/<package>/`.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::util::{output, root, sh};

/// Modules the guest needs for the 9p host share, when they are not built
/// in. Their dependencies are added from each module's `depends=` modinfo.
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// One entry of `tests/kernels.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct KernelEntry {
    /// Short name used with `--kernel`.
    pub name: String,
    /// Debian metapackage that names today's package of this series.
    pub metapackage: String,
    /// Last resolved package, version and .deb sha256 (written back).
    #[serde(default)]
    pub package: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub sha256: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct KernelsFile {
    kernel: Vec<KernelEntry>,
}

pub fn kernels_toml() -> PathBuf {
    root().join("tests/kernels.toml")
}

pub fn read_list() -> anyhow::Result<Vec<KernelEntry>> {
    let path = kernels_toml();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let f: KernelsFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if f.kernel.is_empty() {
        bail!("{} lists no kernels", path.display());
    }
    Ok(f.kernel)
}

const HEADER: &str = "\
# Kernels under test in the VM tier (`cargo xtask vm-test`, see
# xtask/src/vm/README.md).
#
# `name` is what `--kernel` selects; `metapackage` is the Debian package that
# depends on today's kernel of the series. vm-test resolves it with apt-cache,
# downloads the package with `apt-get download` (apt checks it against the
# signed archive indices) and writes the last resolved `package`, `version`
# and the .deb's `sha256` back here, so changes show up in review.
";

pub fn write_list(list: &[KernelEntry]) -> anyhow::Result<()> {
    let body = toml::to_string(&KernelsFile {
        kernel: list.to_vec(),
    })?;
    let text = format!("{HEADER}\n{body}");
    let path = kernels_toml();
    if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("vm: updated {}", path.display());
    }
    Ok(())
}

/// A kernel ready to boot.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CachedKernel {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// Module names in load order (files `modules/<name>.ko`).
    pub modules: Vec<String>,
    /// Whether `CONFIG_LSM` lists `bpf` (otherwise `lsm=...,bpf` is added).
    pub config_lsm: String,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl CachedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.ko"))
    }
    /// The `lsm=` argument to add, if the default list lacks `bpf`.
    pub fn lsm_arg(&self) -> Option<String> {
        if self.config_lsm.split(',').any(|l| l == "bpf") {
            None
        } else if self.config_lsm.is_empty() {
            Some("lsm=bpf".into())
        } else {
            Some(format!("lsm={},bpf", self.config_lsm))
        }
    }
}

pub fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

/// Runs `apt-get update` at most once per xtask run.
struct Apt {
    updated: bool,
}

impl Apt {
    fn retry<T>(&mut self, what: &str, f: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
        match f() {
            Ok(v) => Ok(v),
            Err(e) if !self.updated => {
                eprintln!("vm: {what}: {e:#}; running apt-get update once");
                sh(Command::new("apt-get").args(["update", "-q"]))?;
                self.updated = true;
                f()
            }
            Err(e) => Err(e),
        }
    }
}

/// `apt-cache depends <meta>` -> the `linux-image-*` package it depends on.
fn resolve_package(meta: &str) -> anyhow::Result<String> {
    let out = output(Command::new("apt-cache").args(["depends", meta]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("`apt-cache depends {meta}` names no linux-image-* package"))
}

/// The candidate version apt would download.
fn candidate_version(pkg: &str) -> anyhow::Result<String> {
    let out = output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    out.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("`apt-cache show {pkg}` has no Version"))
}

/// Resolves every selected entry and makes sure its kernel is cached.
/// Updates `list` with what was resolved.
pub fn prepare(list: &mut [KernelEntry], selected: &[String]) -> anyhow::Result<Vec<CachedKernel>> {
    let mut apt = Apt { updated: false };
    let mut out = Vec::new();
    for entry in list.iter_mut().filter(|e| selected.contains(&e.name)) {
        let resolved = apt.retry(&format!("resolving {}", entry.metapackage), || {
            let pkg = resolve_package(&entry.metapackage)?;
            let ver = candidate_version(&pkg)?;
            Ok((pkg, ver))
        });
        let (pkg, ver) = match resolved {
            Ok(r) => r,
            // Offline: fall back to the last resolved kernel if it is cached.
            Err(e) if !entry.package.is_empty() => {
                eprintln!(
                    "vm: cannot resolve {} ({e:#}); using the last resolved {} {}",
                    entry.metapackage, entry.package, entry.version
                );
                (entry.package.clone(), entry.version.clone())
            }
            Err(e) => return Err(e),
        };
        let known_sha = (entry.package == pkg && entry.version == ver && !entry.sha256.is_empty())
            .then(|| entry.sha256.clone());
        let k = ensure_cached(&mut apt, &pkg, &ver, known_sha.as_deref())?;
        eprintln!(
            "vm: kernel {:<5} {} -> {} {} (Linux {}) sha256 {}",
            entry.name, entry.metapackage, k.package, k.version, k.release, k.sha256
        );
        entry.package = k.package.clone();
        entry.version = k.version.clone();
        entry.sha256 = k.sha256.clone();
        out.push(k);
    }
    Ok(out)
}

fn read_cached(dir: &Path) -> Option<CachedKernel> {
    let text = fs::read_to_string(dir.join("meta.toml")).ok()?;
    let mut k: CachedKernel = toml::from_str(&text).ok()?;
    k.dir = dir.to_path_buf();
    let complete = k.vmlinuz().is_file() && k.modules.iter().all(|m| k.module_path(m).is_file());
    complete.then_some(k)
}

fn ensure_cached(
    apt: &mut Apt,
    pkg: &str,
    ver: &str,
    known_sha: Option<&str>,
) -> anyhow::Result<CachedKernel> {
    let dir = vm_dir().join(pkg);
    if let Some(k) = read_cached(&dir) {
        if k.version == ver {
            if let Some(sha) = known_sha {
                if sha != k.sha256 {
                    bail!(
                        "{}: cached {pkg} {ver} has sha256 {} but tests/kernels.toml records {sha}",
                        dir.display(),
                        k.sha256
                    );
                }
            }
            eprintln!("vm: {pkg} {ver} cached in {}", dir.display());
            return Ok(k);
        }
        eprintln!(
            "vm: cached {pkg} is {} but the archive has {ver}; refetching",
            k.version
        );
    }
    let dl = vm_dir().join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    apt.retry(&format!("downloading {pkg}={ver}"), || {
        sh(Command::new("apt-get")
            .current_dir(&dl)
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{pkg}={ver}")))
    })?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dl.display()))?;
    let sha = output(Command::new("sha256sum").arg(&deb))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "vm: downloaded {} ({} MB) sha256 {sha}",
        deb.file_name().unwrap().to_string_lossy(),
        fs::metadata(&deb)?.len() / 1_000_000
    );
    if let Some(known) = known_sha {
        if known != sha {
            bail!("{pkg} {ver}: the archive's .deb has sha256 {sha}, but tests/kernels.toml records {known}; refusing it");
        }
    }
    let deb_ver = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?;
    if deb_ver != ver {
        bail!("{} is version {deb_ver}, expected {ver}", deb.display());
    }
    let tmp = vm_dir().join(format!("{pkg}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let extract = tmp.join("extract");
    fs::create_dir_all(&extract)?;
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;

    let boot = extract.join("boot");
    let find_boot = |prefix: &str| -> anyhow::Result<PathBuf> {
        fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    let vmlinuz = find_boot("vmlinuz-")?;
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let config = fs::read_to_string(find_boot("config-")?)?;
    fs::copy(&vmlinuz, tmp.join("vmlinuz"))?;
    fs::write(tmp.join("config"), &config)?;
    let config_lsm = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_LSM="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    if !config.lines().any(|l| l == "CONFIG_BPF_LSM=y") {
        bail!("{pkg}: CONFIG_BPF_LSM is not set; it cannot serve the VM tier");
    }

    let moddir = extract.join("lib/modules").join(&release);
    let modules = module_closure(&moddir, ROOT_MODULES)?;
    fs::create_dir_all(tmp.join("modules"))?;
    let mut names = Vec::new();
    for (name, path) in &modules {
        fs::write(
            tmp.join("modules").join(format!("{name}.ko")),
            read_module(path)?,
        )?;
        names.push(name.clone());
    }
    let k = CachedKernel {
        package: pkg.into(),
        version: ver.into(),
        sha256: sha,
        release,
        modules: names,
        config_lsm,
        dir: dir.clone(),
    };
    fs::write(tmp.join("meta.toml"), toml::to_string(&k)?)?;
    fs::remove_dir_all(&extract)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    fs::remove_dir_all(&dl)?;
    read_cached(&dir).with_context(|| format!("{} incomplete after extraction", dir.display()))
}

/// Normalised module name of a file (`9pnet_virtio.ko.xz` -> `9pnet_virtio`).
fn module_name(file: &Path) -> Option<String> {
    let n = file.file_name()?.to_str()?;
    let stem = n.strip_suffix(".ko.xz").or_else(|| n.strip_suffix(".ko"))?;
    Some(stem.replace('-', "_"))
}

/// The module's ELF image, decompressed.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz")
            .args(["-d", "-c"])
            .arg(path)
            .output()
            .context("running xz (install xz-utils)")?;
        if !out.status.success() {
            bail!(
                "xz -d {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    } else {
        Ok(fs::read(path)?)
    }
}

/// The `depends=` list from a module's `.modinfo` strings.
fn module_depends(image: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = image.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &image[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The modules needed for `roots`, dependencies first. Roots built into
/// the kernel (`modules.builtin`) are skipped.
fn module_closure(moddir: &Path, roots: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = module_name(&p) {
                index.insert(n, p);
            }
        }
    }
    let builtin: HashSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 32 {
            bail!("module dependency cycle at {name}");
        }
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = index
            .get(name)
            .with_context(|| format!("module {name} (a dependency) is not in the package"))?;
        for dep in module_depends(&read_module(path)?) {
            visit(&dep, index, seen, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for r in roots {
        if index.contains_key(*r) {
            visit(r, &index, &mut seen, &mut order, 0)?;
        } else if !builtin.contains(*r) {
            bail!(
                "module {r} is neither built into the kernel nor shipped in {}",
                moddir.display()
            );
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depends_from_modinfo() {
        let img = b"\x7fELF junk\0license=GPL\0depends=netfs,9pnet,fs-cache\0vermagic=6.1\0";
        assert_eq!(module_depends(img), ["netfs", "9pnet", "fs_cache"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            module_name(Path::new("a/9pnet_virtio.ko.xz")).as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            module_name(Path::new("kernel/fs/fs-cache.ko")).as_deref(),
            Some("fs_cache")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
    }

    #[test]
    fn lsm_argument_only_when_bpf_missing() {
        let mut k = CachedKernel {
            package: String::new(),
            version: String::new(),
            sha256: String::new(),
            release: String::new(),
            modules: vec![],
            config_lsm: "landlock,lockdown,yama,bpf".into(),
            dir: PathBuf::new(),
        };
        assert_eq!(k.lsm_arg(), None);
        k.config_lsm = "landlock,apparmor".into();
        assert_eq!(k.lsm_arg().as_deref(), Some("lsm=landlock,apparmor,bpf"));
    }

    #[test]
    fn the_checked_in_list_parses() {
        let list = read_list().unwrap();
        let names: Vec<_> = list.iter().map(|k| k.name.as_str()).collect();
        assert!(
            names.contains(&"6.1") && names.contains(&"6.12"),
            "{names:?}"
        );
    }
}
