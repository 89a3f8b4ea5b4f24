//! `wasmhttp.io/` annotations: every knob of the runtime's model (`wasmhttp.io/<knob>`, see README's table),
//! plus what only a container can say:
//!
//! | key | accepted form | sets |
//! |---|---|---|
//! | `wasmhttp.io/<knob>` | the knob's form | the knob, ranked by [`wasmhttp_runtime::fold`] (tighten freely, loosen only within node ceilings) |
//! | `wasmhttp.io/allowed-outbound-hosts` | comma-separated `host` or `host:port` | outbound HTTP the guest may make |
//! | `wasmhttp.io/port` | 1–65535 | the listen port (overrides env `PORT`) |
//! | `wasmhttp.io/metrics-port` | 1–65535 | serve Prometheus `/metrics` on this port in the pod's network namespace (where the node's `[metrics] allow-annotation` is not false) |
//! | `wasmhttp.io/image` | an image reference in containerd | read the wasm layer of that image from containerd's content store (containerd 1.6, which cannot unpack wasm artifacts: `ctr run --rootfs`); an image other than the container's own only where the node's `[security] image-annotation = "any"` |
//!
//! A bad value fails Create naming the key and the accepted form; an unknown key under the prefix is logged
//! as a warning (a typo should not take a service down, but should be visible).

use std::collections::HashMap;
use wasmhttp_runtime::knobs::Refused;
use wasmhttp_runtime::{KNOBS, Knob, Limits};

/// The annotation prefix.
pub const PREFIX: &str = "wasmhttp.io/";

/// What the annotations set.
#[derive(Debug, Default, PartialEq)]
pub struct Annotated {
    /// Knobs, to be folded over the OCI values and node defaults.
    pub limits: Limits,
    /// Hosts the guest may reach with outbound HTTP.
    pub allowed_outbound_hosts: Vec<String>,
    /// The listen port, when annotated.
    pub port: Option<u16>,
    /// The port of the pod's `/metrics` endpoint, when annotated.
    pub metrics_port: Option<u16>,
    /// The image whose wasm layer to run, when annotated.
    pub image: Option<String>,
}

/// Reads every `wasmhttp.io/` annotation; the error names the key and the accepted form.
pub fn parse(annotations: &HashMap<String, String>) -> Result<Annotated, String> {
    let mut annotated = Annotated::default();
    let mut keys: Vec<_> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    keys.sort();
    for (key, value) in keys {
        let name = &key[PREFIX.len()..];
        let bad = |form: &str| format!("annotation {key}={value:?} is invalid: expected {form}");
        let value = value.trim();
        if let Some(knob) = KNOBS.iter().find(|k| k.name == name) {
            knob.set(&mut annotated.limits, value)
                .map_err(|e| format!("annotation {key}={value:?} is invalid: {e}"))?;
            continue;
        }
        match name {
            "allowed-outbound-hosts" => {
                annotated.allowed_outbound_hosts = value
                    .split(',')
                    .filter(|h| !h.trim().is_empty())
                    .map(wasmhttp_runtime::parse_allowed_host)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("annotation {key}={value:?} is invalid: {e}"))?;
            }
            "port" | "metrics-port" => {
                let port = port(value).ok_or_else(|| bad(PORT_FORM))?;
                if name == "port" {
                    annotated.port = Some(port);
                } else {
                    annotated.metrics_port = Some(port);
                }
            }
            "image" if !value.is_empty() => annotated.image = Some(value.to_string()),
            "image" => return Err(bad("an image reference such as docker.io/library/hello:v1")),
            _ => tracing::warn!(
                annotation = %key,
                known = %known_keys(),
                "unknown wasmhttp annotation ignored"
            ),
        }
    }
    Ok(annotated)
}

/// The accepted form of a port, for errors.
pub const PORT_FORM: &str = "a port number from 1 to 65535";

/// A TCP port to listen on (1–65535), as an annotation or the node configuration writes it.
pub fn port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// Why the fold refused an annotation, naming it as the pod author wrote it.
pub fn refusal(refused: &Refused) -> String {
    format!(
        "annotation {PREFIX}{}={} is refused: {}",
        refused.knob, refused.value, refused.reason
    )
}

fn known_keys() -> String {
    KNOBS
        .iter()
        .map(|k: &Knob| k.name)
        .chain(["allowed-outbound-hosts", "port", "metrics-port", "image"])
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_sets_its_field() {
        let annotated = parse(&annotations(&[
            ("memory-per-instance", "16Mi"),
            ("fuel-per-request", "1000"),
            ("max-concurrency", "3"),
            ("queue-depth", "5"),
            ("request-timeout", "250ms"),
            ("max-request-body", "1Mi"),
            ("allowed-outbound-hosts", "example.com, db:8080"),
            ("port", "9090"),
            ("metrics-port", "9464"),
            ("no-such-key", "x"),
        ]))
        .unwrap();
        let limits = &annotated.limits;
        assert_eq!(limits.memory_per_instance, Some(16 << 20));
        assert_eq!(limits.fuel_per_request, Some(1000));
        assert_eq!(limits.max_concurrency, Some(3));
        assert_eq!(limits.queue_depth, Some(5));
        assert_eq!(limits.request_timeout, Some(Duration::from_millis(250)));
        assert_eq!(limits.max_request_body, Some(1 << 20));
        assert_eq!(annotated.allowed_outbound_hosts, ["example.com", "db:8080"]);
        assert_eq!(annotated.port, Some(9090));
        assert_eq!(annotated.metrics_port, Some(9464));
    }

    #[test]
    fn bad_values_name_the_key_and_the_form() {
        for (key, value, form) in [
            ("memory-per-instance", "lots", "a size"),
            ("fuel-per-request", "0", "a positive integer"),
            ("max-concurrency", "-1", "a positive integer"),
            ("queue-depth", "x", "an integer of 0 or more"),
            ("request-timeout", "5", "a duration"),
            ("max-request-body", "1Xi", "a size"),
            ("allowed-outbound-hosts", "http://x/y", "host:port"),
            ("port", "70000", "a port number"),
            ("metrics-port", "0", "a port number"),
        ] {
            let err = parse(&annotations(&[(key, value)])).unwrap_err();
            assert!(
                err.contains(&format!("{PREFIX}{key}")) && err.contains(form),
                "{key}: {err}"
            );
        }
    }
}
