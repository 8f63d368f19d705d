//! # stepq-otel
//!
//! OpenTelemetry for stepq, off by default (the `otel` feature of `stepq-cli`'s `stepq`
//! binary turns it on):
//!
//! - [`OtelPropagator`], installed into `stepq_broker::trace`, makes a run one trace: the
//!   orchestrator's `run` span takes the run's trace id (derived from the run id, so a resume
//!   stays in it), each step task's `traceparent` label is sent from that span, and a
//!   worker's `task` span becomes its child — on every machine.
//! - [`init`] exports spans over OTLP/HTTP (protobuf) to `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (default `http://localhost:4318`) from a batch processor on its own thread, and returns
//!   the `tracing` layer to add to the subscriber and an [`OtelGuard`] that flushes on drop.
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! // A provider of your own (here one with no exporter), as `init` builds one for OTLP.
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("stepq"));
//! let subscriber = tracing_subscriber::registry().with(layer);
//! stepq_otel::install_propagator();
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("run");
//!     let parent = stepq_broker::TraceParent::for_key("run-1");
//!     stepq_broker::trace::adopt(&span, parent);
//!     let _entered = span.enter();
//!     let current = stepq_broker::trace::current_context().unwrap();
//!     assert_eq!(current.trace_id, parent.trace_id);
//! });
//! ```

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use stepq_broker::trace::TracePropagator;
use stepq_broker::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The default OTLP/HTTP endpoint (a collector on this host).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// Environment variable naming the collector (the OpenTelemetry standard one).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OpenTelemetry exporter to {endpoint}: {message}")]
pub struct OtelError {
    /// The collector's base URL.
    pub endpoint: String,
    /// What went wrong.
    pub message: String,
}

/// Bridges `stepq_broker::trace` to the spans `tracing-opentelemetry` keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelPropagator;

impl TracePropagator for OtelPropagator {
    fn current(&self) -> Option<TraceParent> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        })
    }

    fn adopt(&self, span: &tracing::Span, parent: TraceParent) {
        let flags = if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        // Fails only for a span that has no OpenTelemetry data (no layer): nothing to adopt.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

/// Installs [`OtelPropagator`] for this process (once; later calls do nothing).
pub fn install_propagator() {
    stepq_broker::trace::install_propagator(OtelPropagator);
}

/// Flushes and shuts the exporter down when dropped: keep it until the process ends.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: OpenTelemetry export did not shut down cleanly: {e}");
        }
    }
}

/// The collector `init` exports to: `OTEL_EXPORTER_OTLP_ENDPOINT`, else [`DEFAULT_ENDPOINT`].
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// A `tracing` layer exporting spans of `service_name` over OTLP/HTTP to [`endpoint`]
/// (`/v1/traces`), the guard that flushes them, and the propagator installed.
pub fn init<S>(
    service_name: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        OtelGuard,
    ),
    OtelError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let endpoint = endpoint();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| OtelError {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("stepq"));
    install_propagator();
    Ok((layer, OtelGuard { provider }))
}
