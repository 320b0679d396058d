//! OpenTelemetry span export over OTLP for relay's binaries (feature `cli`),
//! configured only by the standard `OTEL_*` environment variables.
//!
//! Why a module of its own: every binary installs its logging through
//! [`cli::init_tracing`](crate::cli::init_tracing), and export has to be
//! decided there (one global subscriber) and flushed at exit (a
//! [`Telemetry`] guard). Keeping the OTLP stack behind `cli` means a
//! library user of relay-core never compiles it.
//!
//! With no endpoint set nothing is installed: no layer, no exporter thread,
//! and [`otel::exporting`](crate::otel::exporting) stays false so the
//! router and gateway create no spans of their own.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | traces URL, used as is | — |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL (`/v1/traces` appended for HTTP) | — (export off) |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` or `http/protobuf` | `http/protobuf` |
//! | `OTEL_SERVICE_NAME` | `service.name` | the binary's own name |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampler, ratio | `parentbased_always_on`, 1.0 |
//! | `OTEL_BSP_SCHEDULE_DELAY` | batch export delay, ms | 5000 |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | batch limits | 2048, 512 |
//!
//! `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT` and `…_COMPRESSION` (and their
//! `TRACES_` forms) are read by the exporter itself.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): follow the caller's sampled
    /// flag, record new traces.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio for new traces.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        let parent = |root| Sampler::ParentBased(Box::new(root));
        match self {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerChoice::ParentBasedAlwaysOn => parent(Sampler::AlwaysOn),
            SamplerChoice::ParentBasedAlwaysOff => parent(Sampler::AlwaysOff),
            SamplerChoice::ParentBasedTraceIdRatio(r) => parent(Sampler::TraceIdRatioBased(r)),
        }
    }
}

/// Why the `OTEL_*` settings cannot be used (export stays off).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable has a value this exporter does not support.
    #[error("{var}={value:?}: {why}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        why: &'static str,
    },
    /// The exporter could not be built (e.g. an endpoint that is no URI).
    #[error("OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Span export settings, read from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans are sent: the full traces URL (HTTP) or the collector
    /// address (gRPC).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// `service.name` of every span.
    pub service_name: String,
    /// Which traces are recorded.
    pub sampler: SamplerChoice,
    /// Longest wait before a batch of finished spans is sent.
    pub schedule_delay: Duration,
    /// Spans held for export at most; more are dropped.
    pub max_queue_size: usize,
    /// Spans per export request at most.
    pub max_export_batch_size: usize,
}

impl TelemetryConfig {
    /// Reads the process environment; `Ok(None)` when no endpoint is set
    /// (export off). `service` is the `service.name` unless
    /// `OTEL_SERVICE_NAME` is set.
    pub fn from_env(service: &str) -> Result<Option<Self>, TelemetryError> {
        Self::from_lookup(service, |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables read through
    /// `lookup`; an empty value counts as unset.
    pub fn from_lookup(
        service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let protocol = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            }) {
            None => Protocol::HttpProtobuf,
            Some((_, v)) if v == "grpc" => Protocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
            Some((var, value)) => {
                return Err(TelemetryError::Invalid {
                    var,
                    value,
                    why: "supported: grpc, http/protobuf",
                })
            }
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces,
            (None, Some(base)) if protocol == Protocol::HttpProtobuf => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG") else {
                return Ok(1.0);
            };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::Invalid {
                    var: "OTEL_TRACES_SAMPLER_ARG",
                    value: arg,
                    why: "a ratio from 0 to 1",
                }),
            }
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
            Some("always_on") => SamplerChoice::AlwaysOn,
            Some("always_off") => SamplerChoice::AlwaysOff,
            Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(TelemetryError::Invalid {
                    var: "OTEL_TRACES_SAMPLER",
                    value: other.to_owned(),
                    why: "supported: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
                })
            }
        };
        let number = |var: &'static str, default: u64| -> Result<u64, TelemetryError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| TelemetryError::Invalid {
                    var,
                    value: v,
                    why: "a whole number",
                }),
            }
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()),
            sampler,
            schedule_delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            max_queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize,
            max_export_batch_size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize,
        }))
    }

    /// Builds the exporter and the tracer provider (a batch processor:
    /// spans are sent from a background thread, never on the caller's
    /// path). Needs a Tokio runtime for `grpc`.
    pub fn provider(&self) -> Result<SdkTracerProvider, TelemetryError> {
        let exporter = match self.protocol {
            Protocol::Grpc => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&self.endpoint)
                .build(),
            Protocol::HttpProtobuf => SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&self.endpoint)
                .build(),
        }
        .map_err(TelemetryError::Exporter)?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(self.schedule_delay)
            .with_max_queue_size(self.max_queue_size.max(1))
            .with_max_export_batch_size(
                self.max_export_batch_size
                    .clamp(1, self.max_queue_size.max(1)),
            )
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(self.sampler.sampler())
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            )
            .build())
    }
}

/// Crates whose spans are exported (the target's first path segment).
const RELAY_TARGETS: [&str; 6] = [
    "relay_core",
    "relay_router",
    "relayctl",
    "relay_sse",
    "pipeline_scan",
    "relay_load",
];

/// The exporter's own transport stack: nothing of it is recorded, or its
/// spans and events would be exported by the exporter, without end.
const EXPORTER_TARGETS: [&str; 9] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// Whether the OpenTelemetry layer records `meta`: relay's own spans and
/// events at `info` and above; other crates' warnings and errors as events
/// of the relay span they happen in, but never their spans (a broker
/// connection's lives as long as the process and belongs to no job);
/// nothing from the exporter's stack.
pub(crate) fn layer_records(meta: &tracing::Metadata<'_>) -> bool {
    let krate = meta.target().split("::").next().unwrap_or_default();
    if EXPORTER_TARGETS.contains(&krate) {
        return false;
    }
    if RELAY_TARGETS.contains(&krate) {
        return *meta.level() <= tracing::Level::INFO;
    }
    meta.is_event() && *meta.level() <= tracing::Level::WARN
}

/// The OpenTelemetry layer for `provider`'s tracer.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("relay"))
        .with_threads(false)
}

/// Span export for the life of a binary, returned by
/// [`cli::init_tracing`](crate::cli::init_tracing): keep it until `main`
/// ends. Dropping it (or [`shutdown`](Self::shutdown)) sends the spans
/// still queued, so a job's last spans are not lost at exit.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// A guard for `provider` (marks spans as exported, see
    /// [`otel::exporting`](crate::otel::exporting)).
    pub(crate) fn exporting(provider: SdkTracerProvider) -> Self {
        crate::otel::set_exporting(true);
        Self {
            provider: Some(provider),
        }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the queued spans and stops export.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        crate::otel::set_exporting(false);
        let flush = move || {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "span export did not shut down cleanly");
            }
        };
        // The gRPC exporter's connection runs on the runtime: on a worker
        // thread, let the runtime go on while this thread waits.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(flush),
            _ => flush(),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<TelemetryConfig>, TelemetryError> {
        TelemetryConfig::from_lookup("relay-test", |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        // Other settings alone do not turn export on.
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "x")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn http_is_the_default_and_gets_the_traces_path() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.service_name, "relay-test");
        assert_eq!(c.sampler, SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(c.schedule_delay, Duration::from_millis(5000));
        assert_eq!((c.max_queue_size, c.max_export_batch_size), (2048, 512));
    }

    #[test]
    fn grpc_uses_the_endpoint_as_is() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://127.0.0.1:4317");
    }

    #[test]
    fn signal_specific_variables_win() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4317"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://traces:9999/custom");
    }

    #[test]
    fn service_sampler_and_batch_settings() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SERVICE_NAME", "scan-edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name, "scan-edge");
        assert_eq!(c.sampler, SamplerChoice::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.schedule_delay, Duration::from_millis(100));
        assert_eq!((c.max_queue_size, c.max_export_batch_size), (64, 8));
        for (name, want) in [
            ("always_on", SamplerChoice::AlwaysOn),
            ("always_off", SamplerChoice::AlwaysOff),
            ("traceidratio", SamplerChoice::TraceIdRatio(1.0)),
            (
                "parentbased_always_off",
                SamplerChoice::ParentBasedAlwaysOff,
            ),
        ] {
            let c = config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_TRACES_SAMPLER", name),
            ])
            .unwrap()
            .unwrap();
            assert_eq!(c.sampler, want, "{name}");
        }
    }

    #[test]
    fn unsupported_values_are_errors_naming_the_variable() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x");
        for (vars, var) in [
            (
                vec![ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![ep, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    ep,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![ep, ("OTEL_BSP_SCHEDULE_DELAY", "5s")],
                "OTEL_BSP_SCHEDULE_DELAY",
            ),
        ] {
            match config(&vars) {
                Err(TelemetryError::Invalid { var: got, .. }) => assert_eq!(got, var),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    /// A callsite's metadata for [`layer_records`].
    macro_rules! meta {
        ($kind:ident, $level:ident, $target:expr) => {{
            struct Cs;
            static CS: Cs = Cs;
            impl tracing::callsite::Callsite for Cs {
                fn set_interest(&self, _: tracing::subscriber::Interest) {}
                fn metadata(&self) -> &tracing::Metadata<'_> {
                    &META
                }
            }
            static META: tracing::Metadata<'static> = tracing::Metadata::new(
                "m",
                $target,
                tracing::Level::$level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
                tracing::metadata::Kind::$kind,
            );
            &META
        }};
    }

    #[test]
    fn the_layer_records_relay_spans_and_keeps_the_exporter_out() {
        assert!(layer_records(meta!(
            SPAN,
            INFO,
            "relay_core::router::batch"
        )));
        assert!(layer_records(meta!(
            SPAN,
            INFO,
            "pipeline_scan::pipeline::engine"
        )));
        assert!(layer_records(meta!(EVENT, INFO, "relay_sse::session")));
        assert!(!layer_records(meta!(
            SPAN,
            DEBUG,
            "relay_core::router::batch"
        )));
        // Another crate's span, whatever its level, stays out; its
        // warnings are kept as events.
        assert!(!layer_records(meta!(SPAN, ERROR, "lapin::io_loop")));
        assert!(!layer_records(meta!(EVENT, INFO, "lapin::io_loop")));
        assert!(layer_records(meta!(EVENT, WARN, "lapin::io_loop")));
        assert!(!layer_records(meta!(EVENT, ERROR, "h2::proto")));
        assert!(!layer_records(meta!(EVENT, ERROR, "opentelemetry_sdk")));
    }

    #[test]
    fn a_provider_builds_for_both_protocols() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for protocol in ["grpc", "http/protobuf"] {
                let c = config(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ])
                .unwrap()
                .unwrap();
                let provider = c.provider().unwrap();
                provider.shutdown().unwrap();
            }
        });
    }
}
