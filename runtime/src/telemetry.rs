//! OpenTelemetry request tracing: one server span per request, the client's W3C `traceparent` honoured and
//! handed on to the guest's outgoing requests, exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK.
//!
//! Exporting never slows or fails a request: ended spans go into the SDK's bounded queue (dropped when it is
//! full) and a background thread of the SDK sends them in batches, with short timeouts, to a collector that
//! may be down. Nothing is exported unless a [`TracingConfig`] names an endpoint.

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where spans go and how many requests are traced.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL (`http://collector:4318/v1/traces`).
    pub endpoint: String,
    /// The fraction of requests without a sampled parent that are traced, 0–1; a client's sampled
    /// `traceparent` is always followed.
    pub sample_ratio: f64,
}

/// Spans a service may have waiting for export; more are dropped.
const MAX_QUEUED_SPANS: usize = 2048;
/// How long one export may take to connect, and to write or read.
const EXPORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const EXPORT_IO_TIMEOUT: Duration = Duration::from_secs(5);

impl TracingConfig {
    /// The traces URL for an OTLP base endpoint (`http://collector:4318` → `…/v1/traces`), as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` means it. Only `http://` is accepted: spans go to a node-local collector.
    pub fn traces_url(base: &str) -> Result<String, String> {
        let url = format!("{}/v1/traces", base.trim_end_matches('/'));
        check_url(&url)?;
        Ok(url)
    }

    /// The configuration the standard `OTEL_*` environment gives, read through `var`: an endpoint from
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`, the ratio from
    /// `OTEL_TRACES_SAMPLER_ARG`; `None` when no endpoint is set or `OTEL_TRACES_EXPORTER` is `none`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let named = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        match named("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: expected \"otlp\" or \"none\""
                ));
            }
        }
        let endpoint = if let Some(url) = named("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_url(&url).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
            url
        } else if let Some(base) = named("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Self::traces_url(&base).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?
        } else {
            return Ok(None);
        };
        let sample_ratio = match named("OTEL_TRACES_SAMPLER_ARG") {
            Some(text) => {
                parse_ratio(&text).map_err(|e| format!("OTEL_TRACES_SAMPLER_ARG: {e}"))?
            }
            None => 1.0,
        };
        Ok(Some(TracingConfig {
            endpoint,
            sample_ratio,
        }))
    }
}

/// Parses a sampling ratio from 0 to 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{text:?}: expected a ratio from 0 to 1, such as 0.01"))
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{url:?}: expected an http:// URL with a host, such as http://127.0.0.1:4318 (spans go to a \
             node-local collector; https is not supported)"
        ));
    }
    Ok(())
}

/// Creates the spans of every service it is given to, and exports them. Cloning shares the exporter.
#[derive(Clone, Debug)]
pub struct RequestTracer {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

impl RequestTracer {
    /// Starts the exporter (its thread) for `config`; `service` is the OpenTelemetry `service.name`.
    pub fn new(config: &TracingConfig, service: &str) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_IO_TIMEOUT)
            .with_http_client(PlainHttp)
            .build()
            .map_err(|e| format!("OTLP exporter for {}: {e}", config.endpoint))?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_attribute(KeyValue::new("service.name", service.to_string()))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("wasmhttp");
        Ok(RequestTracer { provider, tracer })
    }

    /// Sends what is queued and stops the exporter (waiting at most a few seconds).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(EXPORT_IO_TIMEOUT);
    }

    /// A server span for a request with these `parts`, child of the client's `traceparent` if it sent one.
    pub(crate) fn start(
        &self,
        parts: &http::request::Parts,
        attributes: &[KeyValue],
    ) -> RequestSpan {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&parts.headers));
        let mut all = vec![
            KeyValue::new("http.request.method", parts.method.to_string()),
            KeyValue::new("url.path", parts.uri.path().to_string()),
        ];
        all.extend_from_slice(attributes);
        let span = self
            .tracer
            .span_builder(parts.method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes(all)
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            cx: parent.with_span(span),
        }
    }
}

/// The span of one request: ended (and queued for export) by [`RequestSpan::end`].
pub(crate) struct RequestSpan {
    cx: Context,
}

impl RequestSpan {
    /// The `traceparent` header naming this span, for the guest's outgoing requests.
    pub(crate) fn traceparent(&self) -> Option<http::HeaderValue> {
        let mut headers = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&self.cx, &mut HeaderInjector(&mut headers));
        headers.remove("traceparent")
    }

    /// Ends the span with the response's `status`, and why the host answered instead of the guest.
    pub(crate) fn end(self, status: u16, refusal: Option<&'static str>, reused: Option<bool>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(reused) = reused {
            span.set_attribute(KeyValue::new("wasmhttp.instance.reused", reused));
        }
        if let Some(cause) = refusal {
            span.set_attribute(KeyValue::new("wasmhttp.refusal", cause));
            span.set_attribute(KeyValue::new("error.type", cause));
        }
        if status >= 500 {
            span.set_status(Status::error(refusal.unwrap_or("server error")));
        }
        span.end();
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The exporter's HTTP client: one blocking HTTP/1.1 POST per batch on the SDK's own export thread (no
/// async runtime there), with connect and I/O timeouts so a dead collector costs that thread only.
#[derive(Debug)]
struct PlainHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for PlainHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let uri = request.uri();
        let host = uri.host().ok_or("no host in the OTLP endpoint")?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or("the OTLP endpoint's host has no address")?;
        let mut stream = TcpStream::connect_timeout(&addr, EXPORT_CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(EXPORT_IO_TIMEOUT))?;
        stream.set_write_timeout(Some(EXPORT_IO_TIMEOUT))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            uri.path_and_query().map_or("/", |p| p.as_str()),
            uri.authority().map_or(host, |a| a.as_str()),
            request.body().len()
        );
        for (name, value) in request.headers() {
            if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
                head.push_str(&format!(
                    "{name}: {}\r\n",
                    value.to_str().unwrap_or_default()
                ));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        // Only the status line matters; a collector's answer is small, and more is not read.
        let mut answer = Vec::new();
        stream.take(64 << 10).read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("the OTLP collector sent no HTTP status")?;
        Ok(http::Response::builder()
            .status(status)
            .body(Bytes::new())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_standard_environment_names_the_endpoint_and_ratio() {
        assert_eq!(TracingConfig::from_env(env(&[])), Ok(None));
        let base = TracingConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(base.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(base.sample_ratio, 0.01);
        let exact = TracingConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(exact.endpoint, "http://c:4318/custom");
        let off = env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ]);
        assert_eq!(TracingConfig::from_env(off), Ok(None));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (pairs, named) in [
            (
                vec![("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
        ] {
            let err = TracingConfig::from_env(env(&pairs)).unwrap_err();
            assert!(err.starts_with(named), "{err}");
        }
    }

    #[tokio::test]
    async fn a_span_continues_the_clients_trace_and_names_itself_downstream() {
        let tracer = RequestTracer::new(
            &TracingConfig {
                endpoint: "http://127.0.0.1:9/v1/traces".into(),
                sample_ratio: 0.0,
            },
            "test",
        )
        .unwrap();
        let (parts, ()) = http::Request::get("/x")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap()
            .into_parts();
        let span = tracer.start(&parts, &[]);
        let downstream = span.traceparent().unwrap();
        let downstream = downstream.to_str().unwrap();
        assert!(
            downstream.starts_with("00-0af7651916cd43dd8448eb211c80319c-")
                && !downstream.contains("b7ad6b7169203331")
                && downstream.ends_with("-01"),
            "the client's sampled trace is followed even at ratio 0: {downstream}"
        );
        span.end(200, None, Some(false));
        let (fresh, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        let unsampled = tracer.start(&fresh, &[]).traceparent().unwrap();
        assert!(
            unsampled.to_str().unwrap().ends_with("-00"),
            "{unsampled:?}"
        );
        tracer.shutdown();
    }
}
