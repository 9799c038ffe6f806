//! OTLP logs export of agentmon records.
//!
//! [`OtlpConfig`] is the `[export.otlp]` section of the daemon's
//! configuration; [`OtlpExporter`] takes enriched records (the JSON objects
//! built by [`crate::pipeline::enrich`] and the daemon's session/loss
//! records), maps them to OTLP log records ([`mapping`]) and ships them in
//! batches from a bounded queue, counting everything it cannot deliver.

mod config;
mod exporter;
pub mod mapping;

pub use config::{
    BatchConfig, ConfigError, OtlpConfig, Protocol, RetryConfig, TlsConfig, DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
};
pub use exporter::{resource, ExportCounters, OtlpError, OtlpExporter};
