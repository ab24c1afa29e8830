//! Logs and traces. Logs go to stderr (text or JSON) through `tracing-subscriber`, coloured only
//! when stderr is a terminal and `NO_COLOR` is not set. Traces go to an
//! OTLP collector when one is configured (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`): one
//! span per request (operation, principal, key, cache outcome, error type), a child span per backend
//! call, continuing the caller's W3C `traceparent`.
//!
//! Without a collector the request spans are DEBUG spans that no layer wants, so creating them costs
//! a filter check and nothing is recorded: tracing is off at (almost) zero cost.

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use super::LogFormat;

/// Keeps the trace pipeline alive; flushes and shuts it down when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether traces are exported (request spans get their parent from `traceparent`).
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("kms-sidecar: trace exporter shutdown: {e}");
        }
    }
}

/// The spans the trace layer records: the sidecar's own, at DEBUG and above.
pub(crate) fn trace_filter() -> Targets {
    Targets::new().with_target("kms_sidecar", LevelFilter::DEBUG)
}

/// Builds a tracer provider exporting over OTLP/HTTP (protobuf) to `endpoint`.
fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("kms-sidecar").build())
        .build())
}

/// The AWS SDK (upstream backend, proxy mode) logs whole HTTP requests at TRACE, bodies included,
/// and an Encrypt body carries the plaintext: its runtime is capped at DEBUG whatever the filter
/// asks for. The cap only lowers: at the default `info` the SDK's DEBUG lines (which print the
/// upstream access key id and resolved endpoints) stay out of the log.
const SDK_RUNTIME: &str = "aws_smithy_runtime";

/// The log filter: `RUST_LOG`, else `level`, else `info`; and the SDK runtime at most at DEBUG.
fn log_filter<S>(level: &str) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt as _;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(SDK_RUNTIME, LevelFilter::DEBUG);
    filter.and(cap)
}

/// Whether text logs carry ANSI colours: only on a terminal, since in a file, a pipe or a container
/// log the escape codes are noise that breaks grep; and never when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>).
fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: stderr logs filtered by `level` (or `RUST_LOG`), plus OTLP
/// traces when `otlp_endpoint` is set.
pub fn init(
    format: LogFormat,
    level: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<TelemetryGuard> {
    let filter = log_filter(level);
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let traces = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kms-sidecar"))
            .with_filter(trace_filter())
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = Registry::default().with(logs).with(traces).try_init();
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one KMS request; continues the caller's trace when `propagate` and the request
/// carries a W3C `traceparent`. Fields are filled in as the pipeline learns them.
pub fn request_span(headers: &http::HeaderMap, request_id: &str, propagate: bool) -> Span {
    let span = tracing::debug_span!(
        "kms.request",
        request_id,
        operation = tracing::field::Empty,
        principal = tracing::field::Empty,
        key_id = tracing::field::Empty,
        key_version = tracing::field::Empty,
        cache = tracing::field::Empty,
        error_type = tracing::field::Empty,
    );
    if propagate && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::backend::metrics::BackendMetrics;
    use crate::backend::observed::Observed;
    use crate::backend::{Backend, KeyRef};
    use crate::datadir::{DataDir, RootKeySource};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::trace::InMemorySpanExporter;
    use std::sync::Arc;
    use tracing::Instrument;

    /// A log writer into a shared buffer.
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None), "a pipe or file gets no colour");
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
        // An empty NO_COLOR counts as unset (no-color.org).
        assert!(use_colour(true, Some(OsStr::new(""))));
    }

    #[test]
    fn the_sdk_never_logs_request_bodies_even_at_trace() {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let subscriber = Registry::default().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || sink.clone())
                .with_filter(log_filter("trace")),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", request = "Plaintext=c2VjcmV0", "transmitting request");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "beginning attempt #1");
            tracing::trace!(target: "kms_sidecar::backend", "own trace");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        if std::env::var_os("RUST_LOG").is_none() {
            assert!(text.contains("beginning attempt"), "{text}");
            assert!(text.contains("own trace"), "{text}");
        }
    }

    #[test]
    fn the_cap_never_raises_the_sdk_above_the_filter() {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let subscriber = Registry::default().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || sink.clone())
                .with_filter(log_filter("info")),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", access_key_id = "ASIAEXAMPLE", "resolving endpoint");
            tracing::info!(target: "kms_sidecar::server", "serving");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("ASIAEXAMPLE"), "{text}");
        assert!(text.contains("serving"), "{text}");
    }

    #[test]
    fn request_span_parents_backend_spans_and_continues_traceparent() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = Registry::default().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(trace_filter()),
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap());
        let metrics = Arc::new(
            BackendMetrics::register(&prometheus::Registry::new(), "embedded", 0.0, 0.0).unwrap(),
        );
        let backend = Observed::new(Arc::new(Embedded::open(dir).unwrap()), metrics);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );

        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let span = request_span(&headers, "req-1", true);
            span.record("operation", "Encrypt");
            rt.block_on(
                async {
                    let key = KeyRef {
                        key_id: "k",
                        version: 1,
                    };
                    backend.create_version(key).await.unwrap();
                    backend.encrypt(key, b"aad", b"p").await.unwrap();
                }
                .instrument(span),
            );
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let request = spans
            .iter()
            .find(|s| s.name == "kms.request")
            .expect("request span");
        let backend_spans: Vec<_> = spans.iter().filter(|s| s.name == "backend").collect();
        assert_eq!(backend_spans.len(), 2, "{spans:#?}");
        for b in &backend_spans {
            assert_eq!(
                b.parent_span_id,
                request.span_context.span_id(),
                "backend spans are children"
            );
            assert_eq!(b.span_context.trace_id(), request.span_context.trace_id());
        }
        assert_eq!(
            request.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "caller's trace continues"
        );
        assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(
            request
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "operation" && kv.value.as_str() == "Encrypt")
        );
        let _ = opentelemetry::Context::current().span();
    }
}
