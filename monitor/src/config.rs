//! The daemon configuration file, `/etc/agentmon/agentmon.toml`.
//!
//! Unknown keys are errors; every error names the file, line, column and
//! key and says what was expected. Every key has a default, so an empty
//! file (or none, with `--config` not given) is a complete configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/agentmon/agentmon.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{path}:{line}:{column}: daemon.policy_dir {dir:?} is not a readable directory: {source}"
    )]
    PolicyDir {
        path: String,
        line: usize,
        column: usize,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// `[daemon]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Control socket path.
    pub socket: PathBuf,
    /// Group (besides root) allowed to create sessions; the socket is made
    /// group-owned by it.
    pub group: Option<String>,
    /// Parent cgroup of all sessions, below the cgroup2 mount.
    pub cgroup_parent: String,
    /// Where policies named by `agentmon run --policy NAME` are found.
    pub policy_dir: PathBuf,
    /// Policy used when a session names none.
    pub default_policy: String,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            group: None,
            cgroup_parent: "agentmon".into(),
            policy_dir: PathBuf::from("/etc/agentmon/policies"),
            default_policy: "default".into(),
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Write events to the local store.
    pub enabled: bool,
    /// The SQLite database (the systemd StateDirectory).
    pub path: PathBuf,
    /// `[store.retention]`: `max_age` ("7d"), `max_bytes` ("1GiB" or a
    /// number), `check_interval` ("60s").
    pub retention: crate::store::RetentionConfig,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("/var/lib/agentmon/events.db"),
            retention: crate::store::RetentionConfig::default(),
        }
    }
}

/// `[export]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// `[export.otlp]`: OTLP logs to a collector (absent: no export).
    pub otlp: Option<crate::export::otlp::OtlpConfig>,
    /// Prometheus text metrics on this loopback address, e.g.
    /// `"127.0.0.1:9464"` (absent: no endpoint).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[enforcement]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EnforcementSection {
    /// What file and exec rules in enforce mode do on a kernel without BPF
    /// LSM: `"refuse"` (refuse to start / to create the session),
    /// `"audit"` (decide and report only) or `"kill"` (SIGKILL after the
    /// fact from the open tracepoints).
    pub fallback: crate::enforce::Fallback,
    /// bpffs directory where programs, links and policy maps are pinned so
    /// that enforcement outlives the daemon.
    pub pin_path: PathBuf,
    /// Domain rules: the shortest time, in seconds, for which an address
    /// from a DNS answer keeps its name (answers with a lower TTL count for
    /// this long; at most a day in any case).
    pub dns_min_ttl_secs: u32,
}

impl Default for EnforcementSection {
    fn default() -> Self {
        Self {
            fallback: crate::enforce::Fallback::Refuse,
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            dns_min_ttl_secs: DEFAULT_DNS_MIN_TTL_SECS,
        }
    }
}

/// Default of `[enforcement] dns_min_ttl_secs`.
pub const DEFAULT_DNS_MIN_TTL_SECS: u32 = 300;

/// Default bpffs pin directory.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/agentmon";

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonSection,
    pub store: StoreSection,
    pub export: ExportSection,
    pub enforcement: EnforcementSection,
}

impl Config {
    /// Reads and validates a file: besides [`Config::parse`], a
    /// `daemon.policy_dir` set in the file must be a readable directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let c = Self::parse(path, &text)?;
        check_policy_dir(path, &text)?;
        Ok(c)
    }

    /// Parses text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.display().to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })
    }
}

/// A `daemon.policy_dir` the file sets must be readable now, so that a
/// typo stops the daemon at start rather than failing sessions later. (The
/// default directory may be absent: then no policies are installed.)
fn check_policy_dir(path: &Path, text: &str) -> Result<(), ConfigError> {
    #[derive(Deserialize)]
    struct File {
        daemon: Option<Daemon>,
    }
    #[derive(Deserialize)]
    struct Daemon {
        policy_dir: Option<toml::Spanned<PathBuf>>,
    }
    let Ok(File {
        daemon: Some(Daemon {
            policy_dir: Some(dir),
        }),
    }) = toml::from_str::<File>(text)
    else {
        return Ok(());
    };
    match std::fs::read_dir(dir.get_ref()) {
        Ok(_) => Ok(()),
        Err(source) => {
            let (line, column) = line_col(text, dir.span().start);
            Err(ConfigError::PolicyDir {
                path: path.display().to_string(),
                line,
                column,
                dir: dir.get_ref().display().to_string(),
                source,
            })
        }
    }
}

/// 1-based line and column of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse(Path::new("a.toml"), "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            c.daemon.socket,
            PathBuf::from("/run/agentmon/agentmon.sock")
        );
        assert_eq!(c.daemon.cgroup_parent, "agentmon");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/agentmon/events.db"));
        assert!(c.store.enabled);
    }

    #[test]
    fn values_override_defaults() {
        let c = Config::parse(
            Path::new("a.toml"),
            "[daemon]\ngroup = \"agentmon\"\nsocket = \"/tmp/s.sock\"\n[store.retention]\nmax_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(c.daemon.group.as_deref(), Some("agentmon"));
        assert_eq!(c.daemon.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(c.store.retention.max_bytes, 1000);
        assert_eq!(
            c.store.retention.max_age,
            std::time::Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_file_line_and_key() {
        let e = Config::parse(
            Path::new("/etc/agentmon/agentmon.toml"),
            "[daemon]\nsockte = \"/x\"\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/agentmon/agentmon.toml:2:1:"), "{msg}");
        assert!(msg.contains("unknown field `sockte`"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
        let e = Config::parse(Path::new("c.toml"), "[store]\n\nenabled = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:3:11:"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            "[store.retention]\nmax_age = \"forever\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:2:"), "{e}");
    }

    #[test]
    fn export_sections_are_typed() {
        let c = Config::parse(
            Path::new("a.toml"),
            "[export]\nmetrics_listen = \"127.0.0.1:9464\"\n[export.otlp]\nprotocol = \"grpc\"\nendpoint = \"http://127.0.0.1:4317\"\n",
        )
        .unwrap();
        assert!(c.export.otlp.is_some());
        assert_eq!(c.export.metrics_listen.unwrap().port(), 9464);
        let e = Config::parse(
            Path::new("a.toml"),
            "[export.otlp]\nprotocol = \"carrier-pigeon\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("a.toml:2:"), "{e}");
    }

    #[test]
    fn a_policy_dir_that_cannot_be_read_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agentmon.toml");
        let load = |policy_dir: &Path| {
            let text = format!(
                "[daemon]\npolicy_dir = {:?}\n",
                policy_dir.display().to_string()
            );
            std::fs::write(&cfg, text).unwrap();
            Config::load(&cfg).map_err(|e| e.to_string())
        };
        let missing = dir.path().join("no-such-dir");
        let e = load(&missing).unwrap_err();
        let want = format!("{}:2:14: daemon.policy_dir ", cfg.display());
        assert!(e.starts_with(&want), "{e}");
        assert!(e.contains("no-such-dir"), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
        // A file where a directory is expected.
        let e = load(&cfg).unwrap_err();
        assert!(e.contains("Not a directory"), "{e}");
        // A readable directory is fine, and so is the default one being
        // absent when the file does not set the key.
        let c = load(dir.path()).unwrap();
        assert_eq!(c.daemon.policy_dir, dir.path());
        std::fs::write(&cfg, "[daemon]\ncgroup_parent = \"x\"\n").unwrap();
        assert!(Config::load(&cfg).is_ok());
    }

    /// The shipped `/etc/agentmon/agentmon.toml` (packaging/agentmon.toml)
    /// must parse as it is, and its commented-out defaults (lines starting
    /// with `#` directly followed by a key or a section) must be exactly
    /// the code's defaults.
    #[test]
    fn the_shipped_config_documents_the_real_defaults() {
        let shipped = include_str!("../../packaging/agentmon.toml");
        assert_eq!(
            Config::parse(Path::new("agentmon.toml"), shipped).unwrap(),
            Config::default()
        );
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.matches(" = ").count() >= 11, "{uncommented}");
        assert_eq!(
            Config::parse(Path::new("agentmon.toml"), &uncommented).unwrap(),
            Config::default(),
            "{uncommented}"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/agentmon.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/agentmon.toml"), "{e}");
    }
}
