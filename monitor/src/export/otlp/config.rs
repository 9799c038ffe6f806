//! `[export.otlp]`: where and how records are exported.
//!
//! Every field has a default (documented on the field and tested below), so
//! an empty section exports over HTTP/protobuf to a collector on
//! `127.0.0.1:4318`.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// Default endpoint for `protocol = "grpc"`.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://127.0.0.1:4317";
/// Default endpoint for `protocol = "http/protobuf"` (the full logs URL).
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/logs";

/// Errors in the OTLP configuration. Each names what is wrong: the header,
/// the environment variable, the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("header {header:?} refers to environment variable {var:?}, which is not set")]
    MissingEnv { header: String, var: String },
    #[error("header {header:?}: unterminated `${{` in its value")]
    UnterminatedVar { header: String },
    #[error("header {header:?}: {var:?} is not a valid environment variable name")]
    BadVarName { header: String, var: String },
    #[error("header name {header:?} is not a valid HTTP header name")]
    BadHeaderName { header: String },
    #[error("header {header:?}: its value (after expansion) is not a valid HTTP header value")]
    BadHeaderValue { header: String },
    #[error("reading TLS {what} {}: {source}", file.display())]
    TlsRead {
        what: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS {what} {} holds no PEM {expected}", file.display())]
    TlsPem {
        what: &'static str,
        file: PathBuf,
        expected: &'static str,
    },
    #[error("tls.cert_file and tls.key_file go together: {missing} is missing")]
    TlsPair { missing: &'static str },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("[tls] is set but endpoint {endpoint:?} is not https://")]
    TlsWithoutHttps { endpoint: String },
    #[error("batch.{field} must be at least 1")]
    ZeroBatch { field: &'static str },
    #[error("batch.max_batch ({max_batch}) is larger than batch.max_queue ({max_queue})")]
    BatchLargerThanQueue { max_batch: usize, max_queue: usize },
    #[error("{field} must be longer than zero")]
    ZeroDuration { field: &'static str },
}

/// Wire protocol of the exporter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP/gRPC (tonic), default port 4317.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, default port 4318 — the OTLP
    /// specification's default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// TLS material. Without this section an `https://` endpoint is verified
/// against the system's root certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that sign the collector's
    /// certificate (replaces the system roots). Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS. Default: none.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Default: none.
    pub key_file: Option<PathBuf>,
}

/// Loaded TLS material (PEM text), checked to hold what it should.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsConfig {
    /// Reads the files; errors name the file.
    pub(crate) fn load(&self) -> Result<TlsMaterial, ConfigError> {
        let ca_pem = match &self.ca_file {
            Some(f) => Some(read_pem(f, "ca_file", "CERTIFICATE")?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::TlsPair {
                    missing: "key_file",
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::TlsPair {
                    missing: "cert_file",
                })
            }
            (Some(c), Some(k)) => Some((
                read_pem(c, "cert_file", "CERTIFICATE")?,
                read_pem(k, "key_file", "PRIVATE KEY")?,
            )),
        };
        Ok(TlsMaterial { ca_pem, identity })
    }
}

fn read_pem(
    file: &PathBuf,
    what: &'static str,
    expected: &'static str,
) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(file).map_err(|source| ConfigError::TlsRead {
        what,
        file: file.clone(),
        source,
    })?;
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" / "EC PRIVATE KEY".
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(expected));
    if !has_block {
        return Err(ConfigError::TlsPem {
            what,
            file: file.clone(),
            expected,
        });
    }
    Ok(bytes)
}

/// The exporter's bounded queue and batching.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Records waiting to be exported; a record offered to a full queue is
    /// dropped and counted. Default: 4096.
    pub max_queue: usize,
    /// Records per export request. Default: 512.
    pub max_batch: usize,
    /// Longest a record waits for its batch to fill. Default: "1s".
    #[serde(deserialize_with = "de_duration")]
    pub delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_queue: 4096,
            max_batch: 512,
            delay: Duration::from_secs(1),
        }
    }
}

/// Retries of a failed export request (exponential backoff, doubling).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt; then the batch is dropped and
    /// counted. Default: 5.
    pub max_retries: u32,
    /// Wait before the first retry. Default: "250ms".
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    /// Upper bound of the wait between retries. Default: "8s".
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// `[export.otlp]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector URL. Default: [`DEFAULT_HTTP_ENDPOINT`] for
    /// `http/protobuf` (used as the full URL, path included),
    /// [`DEFAULT_GRPC_ENDPOINT`] for `grpc`.
    pub endpoint: Option<String>,
    /// `"grpc"` or `"http/protobuf"`. Default: `"http/protobuf"`.
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata). Values may contain
    /// `${VAR}`, replaced by that environment variable when the exporter is
    /// built; a missing variable is an error naming the header and the
    /// variable. Default: none.
    pub headers: BTreeMap<String, String>,
    /// TLS files. Default: none (system roots for `https://`).
    pub tls: Option<TlsConfig>,
    /// Deadline of one export request. Default: "10s".
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// How long [`super::OtlpExporter::shutdown`] may take to flush the
    /// queue; what is still queued then is counted as dropped. Default: "5s".
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::default(),
            headers: BTreeMap::new(),
            tls: None,
            timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

impl OtlpConfig {
    /// The endpoint in effect (the configured one or the protocol's
    /// default).
    pub fn endpoint(&self) -> &str {
        match (&self.endpoint, self.protocol) {
            (Some(e), _) => e,
            (None, Protocol::Grpc) => DEFAULT_GRPC_ENDPOINT,
            (None, Protocol::HttpProtobuf) => DEFAULT_HTTP_ENDPOINT,
        }
    }

    /// Checks what serde cannot: sizes, durations, the endpoint's syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.batch;
        if b.max_queue == 0 {
            return Err(ConfigError::ZeroBatch { field: "max_queue" });
        }
        if b.max_batch == 0 {
            return Err(ConfigError::ZeroBatch { field: "max_batch" });
        }
        if b.max_batch > b.max_queue {
            return Err(ConfigError::BatchLargerThanQueue {
                max_batch: b.max_batch,
                max_queue: b.max_queue,
            });
        }
        for (field, d) in [
            ("timeout", self.timeout),
            ("batch.delay", b.delay),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        let endpoint = self.endpoint();
        let uri: http::Uri =
            endpoint
                .parse()
                .map_err(|e: http::uri::InvalidUri| ConfigError::Endpoint {
                    endpoint: endpoint.to_string(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(ConfigError::Endpoint {
                    endpoint: endpoint.to_string(),
                    reason: "the scheme must be http:// or https://".into(),
                })
            }
        }
        if uri.host().is_none() {
            return Err(ConfigError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: "no host".into(),
            });
        }
        if self.tls.is_some() && uri.scheme_str() != Some("https") {
            return Err(ConfigError::TlsWithoutHttps {
                endpoint: endpoint.to_string(),
            });
        }
        Ok(())
    }

    /// The headers with `${VAR}` expanded through `env`, checked to be
    /// valid HTTP header names and values.
    pub fn resolved_headers(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::BadHeaderName {
                    header: name.clone(),
                });
            }
            let v = expand_env(name, value, &env)?;
            if http::HeaderValue::from_str(&v).is_err() {
                return Err(ConfigError::BadHeaderValue {
                    header: name.clone(),
                });
            }
            out.insert(name.to_ascii_lowercase(), v);
        }
        Ok(out)
    }
}

/// Replaces each `${NAME}` in `value` (header `header`) by `env(NAME)`.
/// A `$` not followed by `{` is kept as is; `$${` gives a literal `${`.
fn expand_env(
    header: &str,
    value: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| ConfigError::UnterminatedVar {
                header: header.to_string(),
            })?;
            let var = &tail[..end];
            let valid = var
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ConfigError::BadVarName {
                    header: header.to_string(),
                    var: var.to_string(),
                });
            }
            let v = env(var).ok_or_else(|| ConfigError::MissingEnv {
                header: header.to_string(),
                var: var.to_string(),
            })?;
            out.push_str(&v);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `"10s"`, `"250ms"`, `"1m 30s"` (humantime syntax).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<OtlpConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn empty_section_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, OtlpConfig::default());
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint(), "http://127.0.0.1:4318/v1/logs");
        assert!(c.headers.is_empty());
        assert_eq!(c.tls, None);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.batch.max_queue, 4096);
        assert_eq!(c.batch.max_batch, 512);
        assert_eq!(c.batch.delay, Duration::from_secs(1));
        assert_eq!(c.retry.max_retries, 5);
        assert_eq!(c.retry.initial_backoff, Duration::from_millis(250));
        assert_eq!(c.retry.max_backoff, Duration::from_secs(8));
        c.validate().unwrap();
        let g = parse(r#"protocol = "grpc""#).unwrap();
        assert_eq!(g.endpoint(), "http://127.0.0.1:4317");
    }

    #[test]
    fn full_section_parses() {
        let c = parse(
            r#"
            endpoint = "https://otel.example.invalid:4317"
            protocol = "grpc"
            timeout = "3s"
            shutdown_timeout = "500ms"
            headers = { authorization = "Bearer ${TOKEN}", "x-tenant" = "sec" }
            tls = { ca_file = "/etc/ca.pem", cert_file = "/etc/c.pem", key_file = "/etc/k.pem" }
            batch = { max_queue = 10, max_batch = 5, delay = "20ms" }
            retry = { max_retries = 2, initial_backoff = "10ms", max_backoff = "1s" }
            "#,
        )
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint(), "https://otel.example.invalid:4317");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.shutdown_timeout, Duration::from_millis(500));
        assert_eq!(c.headers["x-tenant"], "sec");
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some("/etc/ca.pem".as_ref()));
        assert_eq!(tls.key_file.as_deref(), Some("/etc/k.pem".as_ref()));
        assert_eq!(
            c.batch,
            BatchConfig {
                max_queue: 10,
                max_batch: 5,
                delay: Duration::from_millis(20)
            }
        );
        assert_eq!(c.retry.max_retries, 2);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = parse("endpont = \"x\"").unwrap_err().to_string();
        assert!(e.contains("endpont"), "{e}");
        let e = parse("batch = { max_queu = 3 }").unwrap_err().to_string();
        assert!(e.contains("max_queu"), "{e}");
        let e = parse("tls = { ca = \"x\" }").unwrap_err().to_string();
        assert!(e.contains("ca"), "{e}");
        let e = parse("protocol = \"http/json\"").unwrap_err().to_string();
        assert!(e.contains("http/json"), "{e}");
        let e = parse("timeout = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = OtlpConfig::default();
        c.batch.max_batch = 5000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BatchLargerThanQueue {
                max_batch: 5000,
                ..
            })
        ));
        let mut c = OtlpConfig::default();
        c.batch.max_queue = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ZeroBatch { field: "max_queue" })
        ));
        let c = OtlpConfig {
            timeout: Duration::ZERO,
            ..OtlpConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ZeroDuration { field: "timeout" })
        ));
        let c = parse(r#"endpoint = "127.0.0.1:4317""#).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:4317"), "{e}");
        let c = parse(r#"endpoint = "ftp://host/x""#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("scheme"));
        let c = parse("tls = { ca_file = \"/ca.pem\" }").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TlsWithoutHttps { .. })
        ));
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> OtlpConfig {
        OtlpConfig {
            headers: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..OtlpConfig::default()
        }
    }

    #[test]
    fn env_expansion_in_header_values() {
        let c = headers(&[
            ("Authorization", "Bearer ${TOKEN}"),
            ("x-a", "${TOKEN}-${TOKEN}${EMPTY}"),
            ("x-b", "cost $5 and $${TOKEN}"),
            ("x-c", "plain"),
        ]);
        let h = c.resolved_headers(env).unwrap();
        assert_eq!(h["authorization"], "Bearer s3cret");
        assert_eq!(h["x-a"], "s3cret-s3cret");
        assert_eq!(h["x-b"], "cost $5 and ${TOKEN}");
        assert_eq!(h["x-c"], "plain");
    }

    #[test]
    fn env_expansion_errors_name_header_and_variable() {
        let e = headers(&[("authorization", "Bearer ${OTLP_TOKEN}")])
            .resolved_headers(env)
            .unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingEnv { header, var } if header == "authorization" && var == "OTLP_TOKEN")
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"authorization\"") && msg.contains("\"OTLP_TOKEN\""),
            "{msg}"
        );
        let e = headers(&[("x-a", "${TOKEN")])
            .resolved_headers(env)
            .unwrap_err();
        assert!(matches!(e, ConfigError::UnterminatedVar { header } if header == "x-a"));
        let e = headers(&[("x-a", "${1BAD}")])
            .resolved_headers(env)
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadVarName { var, .. } if var == "1BAD"));
        let e = headers(&[("bad header", "v")])
            .resolved_headers(env)
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadHeaderName { .. }));
        let e = headers(&[("x-a", "line\nbreak")])
            .resolved_headers(env)
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadHeaderValue { header } if header == "x-a"));
    }

    #[test]
    fn tls_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("agentmon-otlp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing-ca.pem");
        let e = TlsConfig {
            ca_file: Some(missing.clone()),
            ..Default::default()
        }
        .load()
        .unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert!(e.to_string().contains("ca_file"), "{e}");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = TlsConfig {
            ca_file: Some(not_pem.clone()),
            ..Default::default()
        }
        .load()
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::TlsPem { file, .. } if *file == not_pem),
            "{e}"
        );
        let e = TlsConfig {
            cert_file: Some(not_pem.clone()),
            ..Default::default()
        }
        .load()
        .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::TlsPair {
                missing: "key_file"
            }
        ));
        let cert = dir.join("c.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = dir.join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let m = TlsConfig {
            ca_file: Some(cert.clone()),
            cert_file: Some(cert),
            key_file: Some(key),
        }
        .load()
        .unwrap();
        assert!(m.ca_pem.is_some() && m.identity.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
