//! `wasmhttp.io/` annotations: what a container can ask for that OCI's `linux.resources` cannot say.
//!
//! | key | accepted form | sets |
//! |---|---|---|
//! | `wasmhttp.io/memory-per-instance` | size: `16Mi`, `1Gi`, bytes | the memory one instance may hold |
//! | `wasmhttp.io/fuel-per-request` | positive integer | fuel one request may burn (then 500 "cpu budget exceeded") |
//! | `wasmhttp.io/max-concurrency` | positive integer | instances running at once (overrides `pids.limit`) |
//! | `wasmhttp.io/queue-depth` | integer ≥ 0 | requests that may wait for a free instance |
//! | `wasmhttp.io/request-timeout` | duration: `5s`, `250ms` | wall-clock time per request (then 504) |
//! | `wasmhttp.io/max-request-body` | size | largest request body (then 413) |
//! | `wasmhttp.io/allowed-outbound-hosts` | comma-separated `host` or `host:port` | outbound HTTP the guest may make |
//! | `wasmhttp.io/port` | 1–65535 | the listen port (overrides env `PORT`) |
//! | `wasmhttp.io/image` | an image reference in containerd | read the wasm layer of that image from containerd's content store (containerd 1.6, which cannot unpack wasm artifacts: `ctr run --rootfs`) |
//!
//! A bad value fails Create naming the key and the accepted form; an unknown key under the prefix is logged
//! as a warning (a typo should not take a service down, but should be visible).

use std::collections::HashMap;
use wasmhttp_runtime::{Limits, parse_duration, parse_memory};

/// The annotation prefix.
pub const PREFIX: &str = "wasmhttp.io/";

/// What the annotations set beyond [`Limits`].
#[derive(Debug, Default, PartialEq)]
pub struct Annotated {
    /// Hosts the guest may reach with outbound HTTP.
    pub allowed_outbound_hosts: Vec<String>,
    /// The listen port, when annotated.
    pub port: Option<u16>,
    /// The image whose wasm layer to run, when annotated.
    pub image: Option<String>,
}

/// Applies every `wasmhttp.io/` annotation onto `limits`; the error names the key and the accepted form.
pub fn apply(
    annotations: &HashMap<String, String>,
    limits: &mut Limits,
) -> Result<Annotated, String> {
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
        match name {
            "memory-per-instance" => {
                limits.memory_per_instance =
                    Some(parse_memory(value).map_err(|_| bad("a size such as 16Mi or 1Gi"))?)
            }
            "fuel-per-request" => {
                limits.fuel_per_request =
                    Some(positive(value).map_err(|_| bad("a positive integer"))?)
            }
            "max-concurrency" => {
                limits.max_concurrency =
                    Some(positive(value).map_err(|_| bad("a positive integer"))? as usize)
            }
            "queue-depth" => {
                limits.queue_depth = value.parse().map_err(|_| bad("an integer of 0 or more"))?
            }
            "request-timeout" => {
                limits.request_timeout = Some(
                    parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("a duration such as 5s or 250ms"))?,
                )
            }
            "max-request-body" => {
                limits.max_request_body =
                    parse_memory(value).map_err(|_| bad("a size such as 1Mi"))?
            }
            "allowed-outbound-hosts" => {
                let hosts: Vec<String> = value
                    .split(',')
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .collect();
                if hosts.iter().any(|h| h.contains(['/', ' ', '@'])) {
                    return Err(bad(
                        "comma-separated host or host:port names such as api.example.com,db:8080",
                    ));
                }
                annotated.allowed_outbound_hosts = hosts;
            }
            "port" => {
                annotated.port = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("a port number from 1 to 65535"))?,
                )
            }
            "image" if !value.is_empty() => annotated.image = Some(value.to_string()),
            "image" => return Err(bad("an image reference such as docker.io/library/hello:v1")),
            _ => tracing::warn!(
                annotation = %key,
                "unknown wasmhttp annotation ignored; known: memory-per-instance, fuel-per-request, \
                 max-concurrency, queue-depth, request-timeout, max-request-body, allowed-outbound-hosts, port, image"
            ),
        }
    }
    Ok(annotated)
}

fn positive(value: &str) -> Result<u64, ()> {
    value.parse::<u64>().ok().filter(|n| *n > 0).ok_or(())
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
        let mut limits = Limits::default();
        let annotated = apply(
            &annotations(&[
                ("memory-per-instance", "16Mi"),
                ("fuel-per-request", "1000"),
                ("max-concurrency", "3"),
                ("queue-depth", "5"),
                ("request-timeout", "250ms"),
                ("max-request-body", "1Mi"),
                ("allowed-outbound-hosts", "example.com, db:8080"),
                ("port", "9090"),
                ("no-such-key", "x"),
            ]),
            &mut limits,
        )
        .unwrap();
        assert_eq!(limits.memory_per_instance, Some(16 << 20));
        assert_eq!(limits.fuel_per_request, Some(1000));
        assert_eq!(limits.max_concurrency, Some(3));
        assert_eq!(limits.queue_depth, 5);
        assert_eq!(limits.request_timeout, Some(Duration::from_millis(250)));
        assert_eq!(limits.max_request_body, 1 << 20);
        assert_eq!(annotated.allowed_outbound_hosts, ["example.com", "db:8080"]);
        assert_eq!(annotated.port, Some(9090));
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
        ] {
            let err = apply(&annotations(&[(key, value)]), &mut Limits::default()).unwrap_err();
            assert!(
                err.contains(&format!("{PREFIX}{key}")) && err.contains(form),
                "{key}: {err}"
            );
        }
    }
}
