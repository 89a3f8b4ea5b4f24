//! OpenTelemetry request traces: the node's `[tracing]` section (or the standard `OTEL_*` environment
//! containerd starts the shim with) names an OTLP/HTTP collector; without one nothing is exported.
//!
//! ```toml
//! [tracing]
//! exporter = "otlp"                    # or "none": no traces, whatever the environment says
//! endpoint = "http://127.0.0.1:4318"   # the collector's OTLP/HTTP base URL (/v1/traces is added)
//! sample-ratio = 0.01                  # requests traced when the client sent no sampled traceparent
//! ```
//!
//! Like the engine, the exporter is built by the first container of a shim process and shared by the pod's
//! containers.

use std::sync::OnceLock;
use wasmhttp_runtime::telemetry::{RequestTracer, TracingConfig, parse_ratio};

/// The node's `[tracing]` section, as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingSection {
    /// `exporter`: `Some(false)` for "none", `Some(true)` for "otlp".
    pub exporter: Option<bool>,
    /// `endpoint`: the traces URL made from the base URL.
    pub endpoint: Option<String>,
    /// `sample-ratio`.
    pub sample_ratio: Option<f64>,
}

/// Sets one key of the `[tracing]` section.
pub fn set_config(section: &mut TracingSection, key: &str, value: &str) -> Result<(), String> {
    match key {
        "exporter" => {
            section.exporter = Some(match value {
                "otlp" => true,
                "none" => false,
                _ => return Err(format!("{value:?}: expected \"otlp\" or \"none\"")),
            })
        }
        "endpoint" => section.endpoint = Some(TracingConfig::traces_url(value)?),
        "sample-ratio" => section.sample_ratio = Some(parse_ratio(value)?),
        _ => {
            return Err(format!(
                "unknown key `{key}` in [tracing] (keys: exporter, endpoint, sample-ratio)"
            ));
        }
    }
    Ok(())
}

impl TracingSection {
    /// What to export: the section's endpoint, else the environment's (read through `env`); `None` when
    /// nothing names one or `exporter = "none"`.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingConfig>, String> {
        if self.exporter == Some(false) {
            return Ok(None);
        }
        let from_env = TracingConfig::from_env(env).map_err(|e| format!("environment {e}"))?;
        let config = match (&self.endpoint, from_env) {
            (Some(endpoint), env) => Some(TracingConfig {
                endpoint: endpoint.clone(),
                sample_ratio: env.map_or(1.0, |c| c.sample_ratio),
            }),
            (None, env) => env,
        };
        if config.is_none() && self.exporter == Some(true) {
            return Err(
                "[tracing] exporter = \"otlp\" needs an endpoint: set [tracing] endpoint or \
                 OTEL_EXPORTER_OTLP_ENDPOINT"
                    .into(),
            );
        }
        Ok(config.map(|mut c| {
            c.sample_ratio = self.sample_ratio.unwrap_or(c.sample_ratio);
            c
        }))
    }
}

/// The shim's tracer, once the first container has decided whether there is one.
#[derive(Default)]
pub struct SharedTracer(OnceLock<Option<RequestTracer>>);

impl SharedTracer {
    /// The tracer for `section` (the first call decides for the shim's life); `service` names the
    /// OpenTelemetry service.
    pub fn get_or_build(
        &self,
        section: &TracingSection,
        service: &str,
    ) -> Result<Option<RequestTracer>, String> {
        if let Some(built) = self.0.get() {
            return Ok(built.clone());
        }
        let config = section.resolve(|key| std::env::var(key).ok())?;
        let tracer = match config {
            Some(config) => {
                let tracer = RequestTracer::new(&config, service)?;
                tracing::info!(endpoint = %config.endpoint, ratio = config.sample_ratio, "exporting request traces");
                Some(tracer)
            }
            None => None,
        };
        Ok(self.0.get_or_init(|| tracer).clone())
    }

    /// Sends what is queued; called as the shim exits.
    pub fn flush(&self) {
        if let Some(Some(tracer)) = self.0.get() {
            tracer.shutdown();
        }
    }
}

/// OpenTelemetry's names for the pod labels of [`crate::scrape::MetricsRequest`].
pub fn span_attributes(id: &str, labels: &[(String, String)]) -> Vec<(String, String)> {
    let mut attributes = vec![("container.id".to_string(), id.to_string())];
    for (label, value) in labels {
        let key = match label.as_str() {
            "namespace" => "k8s.namespace.name",
            "pod" => "k8s.pod.name",
            "container" => "k8s.container.name",
            _ => continue,
        };
        attributes.push((key.to_string(), value.clone()));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `pairs` only.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| vars.get(key).cloned()
    }

    #[test]
    fn the_section_wins_over_the_environment_and_none_turns_it_off() {
        let mut section = TracingSection::default();
        assert_eq!(section.resolve(env(&[])), Ok(None));
        let from_env = section
            .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")]))
            .unwrap()
            .unwrap();
        assert_eq!(from_env.endpoint, "http://e:4318/v1/traces");
        set_config(&mut section, "endpoint", "http://node:4318").unwrap();
        set_config(&mut section, "sample-ratio", "0.5").unwrap();
        let config = section
            .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (config.endpoint.as_str(), config.sample_ratio),
            ("http://node:4318/v1/traces", 0.5)
        );
        set_config(&mut section, "exporter", "none").unwrap();
        assert_eq!(section.resolve(env(&[])), Ok(None));
    }

    #[test]
    fn bad_settings_are_named() {
        let mut section = TracingSection::default();
        for (key, value, says) in [
            ("exporter", "zipkin", "expected \"otlp\" or \"none\""),
            ("endpoint", "https://c:4318", "http://"),
            ("endpoint", "::", "not a URL"),
            ("sample-ratio", "1.5", "from 0 to 1"),
            ("sampler", "x", "unknown key `sampler`"),
        ] {
            let err = set_config(&mut section, key, value).unwrap_err();
            assert!(err.contains(says), "{key}={value}: {err}");
        }
        set_config(&mut section, "exporter", "otlp").unwrap();
        let err = section.resolve(env(&[])).unwrap_err();
        assert!(err.contains("needs an endpoint"), "{err}");
        let err = TracingSection::default()
            .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")]))
            .unwrap_err();
        assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    }
}
