//! Export of agentmon's enriched records to other systems.
//!
//! - [`otlp`]: OpenTelemetry logs over OTLP (gRPC or HTTP/protobuf), so
//!   security teams can join kernel events with Codex's own OTel logs on
//!   `conversation.id` and `call_id`.
//! - [`metrics`]: counters about the record stream and the exporter
//!   (exported by kind, denials, drops by reason, active sessions), rendered
//!   in the Prometheus text format and served on a loopback address.
//!
//! See `README.md` beside this file for the configuration reference and the
//! attribute mapping.

pub mod metrics;
pub mod otlp;
