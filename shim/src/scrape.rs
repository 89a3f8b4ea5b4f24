//! Prometheus `/metrics` endpoints: a pod is scraped like any other pod, on a port inside its own network
//! namespace.
//!
//! A container asks for one with the `wasmhttp.io/metrics-port` annotation (a pod annotation reaches every
//! container when containerd passes `wasmhttp.io/*` pod annotations through), or the node's `[metrics] port`
//! gives every container one. Containers of one pod asking for the same port share its endpoint, which
//! reports each of them under its own labels; the endpoint is bound at Create, so a port in use fails
//! Create with its message. It lives as long as this shim (one pod's).
//!
//! ```toml
//! [metrics]
//! port = 9464               # serve /metrics on this port in every pod of the node (default: none)
//! allow-annotation = true   # pods may ask with wasmhttp.io/metrics-port (default: true)
//! ```

use crate::bundle::Network;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use wasmhttp_runtime::prometheus::{Labels, MetricsEndpoint, MetricsSet};

/// CRI's annotations naming a container's pod and itself, and the label each becomes.
const CRI_LABELS: [(&str, &str); 3] = [
    ("io.kubernetes.cri.sandbox-namespace", "namespace"),
    ("io.kubernetes.cri.sandbox-name", "pod"),
    ("io.kubernetes.cri.container-name", "container"),
];

/// The node's `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `port`: every container's pod serves `/metrics` here, unless its annotation names another port.
    pub port: Option<u16>,
    /// `allow-annotation`: whether `wasmhttp.io/metrics-port` is honoured (when false, it fails Create).
    pub allow_annotation: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            port: None,
            allow_annotation: true,
        }
    }
}

/// Sets one key of the `[metrics]` section.
pub fn set_config(config: &mut MetricsConfig, key: &str, value: &str) -> Result<(), String> {
    match key {
        "port" => {
            config.port =
                Some(crate::annotations::port(value).ok_or_else(|| {
                    format!("{value:?}: expected {}", crate::annotations::PORT_FORM)
                })?)
        }
        "allow-annotation" => {
            config.allow_annotation = value
                .parse()
                .map_err(|_| format!("{value:?}: expected true or false"))?
        }
        _ => {
            return Err(format!(
                "unknown key `{key}` in [metrics] (keys: port, allow-annotation)"
            ));
        }
    }
    Ok(())
}

/// What a container asks of the metrics endpoints, read from its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsRequest {
    /// The `wasmhttp.io/metrics-port` annotation.
    pub annotated_port: Option<u16>,
    /// Its series' labels beyond `container_id`: the pod's namespace and name and the container's name,
    /// when CRI created it.
    pub labels: Labels,
}

impl MetricsRequest {
    /// Reads the CRI labels from a spec's annotations.
    pub fn new(annotated_port: Option<u16>, annotations: &HashMap<String, String>) -> Self {
        let labels = CRI_LABELS
            .iter()
            .filter_map(|(key, label)| Some((label.to_string(), annotations.get(*key)?.clone())))
            .collect();
        MetricsRequest {
            annotated_port,
            labels,
        }
    }

    /// Where `port` came from, for errors: the annotation or the node's key.
    pub fn origin(&self, port: u16) -> String {
        match self.annotated_port {
            Some(_) => format!("annotation wasmhttp.io/metrics-port={port}"),
            None => format!("node configuration [metrics] port = {port}"),
        }
    }

    /// The port to serve on under the node's `config`, if any; an annotation the node forbids is an error
    /// naming both.
    pub fn port(&self, config: &MetricsConfig) -> Result<Option<u16>, String> {
        match self.annotated_port {
            Some(port) if !config.allow_annotation => Err(format!(
                "annotation wasmhttp.io/metrics-port={port} is not allowed on this node (its [metrics] \
                 allow-annotation = false)"
            )),
            Some(port) => Ok(Some(port)),
            None => Ok(config.port),
        }
    }
}

/// The endpoints this shim serves, by network namespace and port.
#[derive(Default)]
pub struct Endpoints {
    open: Mutex<HashMap<(String, u16), (MetricsSet, MetricsEndpoint)>>,
}

impl Endpoints {
    /// The set served on `port` in `network`, binding the endpoint if this is the first container to ask.
    /// Must be called from within a tokio runtime.
    pub fn join(&self, port: u16, network: &Network) -> Result<MetricsSet, String> {
        let key = (format!("{network:?}"), port);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((set, _)) = open.get(&key) {
            return Ok(set.clone());
        }
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener =
            crate::netns::listen(addr, network).map_err(|e| format!("metrics port {port}: {e}"))?;
        let set = MetricsSet::default();
        let endpoint = MetricsEndpoint::serve(listener, set.clone())
            .map_err(|e| format!("metrics port {port}: cannot serve: {e}"))?;
        tracing::info!(port, network = %key.0, "serving /metrics");
        open.insert(key, (set.clone(), endpoint));
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_annotations_become_pod_labels() {
        let annotations: HashMap<String, String> = [
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-name", "cart-7d9"),
            ("io.kubernetes.cri.container-name", "cart"),
            ("other", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let request = MetricsRequest::new(Some(9464), &annotations);
        let labels: Vec<_> = request
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(labels, ["namespace=shop", "pod=cart-7d9", "container=cart"]);
    }

    #[test]
    fn the_annotation_wins_unless_the_node_forbids_it() {
        let node = MetricsConfig {
            port: Some(9100),
            allow_annotation: true,
        };
        let asked = MetricsRequest::new(Some(9464), &HashMap::new());
        assert_eq!(asked.port(&node), Ok(Some(9464)));
        assert_eq!(MetricsRequest::default().port(&node), Ok(Some(9100)));
        let forbidding = MetricsConfig {
            allow_annotation: false,
            ..node
        };
        let err = asked.port(&forbidding).unwrap_err();
        assert!(
            err.contains("wasmhttp.io/metrics-port=9464") && err.contains("allow-annotation"),
            "{err}"
        );
        assert_eq!(
            MetricsRequest::default().port(&MetricsConfig::default()),
            Ok(None)
        );
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let mut config = MetricsConfig::default();
        assert!(
            set_config(&mut config, "port", "0")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            set_config(&mut config, "allow-annotation", "yes")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(
            set_config(&mut config, "exporter", "x")
                .unwrap_err()
                .contains("unknown key `exporter`")
        );
        set_config(&mut config, "port", "9464").unwrap();
        assert_eq!(config.port, Some(9464));
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_and_one_pod_shares_its_endpoint() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let endpoints = Endpoints::default();
        let err = endpoints.join(port, &Network::Host).unwrap_err();
        assert!(err.contains(&format!("metrics port {port}")), "{err}");
        drop(taken);
        let first = endpoints.join(port, &Network::Host).unwrap();
        let second = endpoints.join(port, &Network::Host).unwrap();
        first.add(
            vec![("container_id".into(), "c1".into())],
            std::sync::Weak::<Never>::new(),
        );
        drop(second);
        let body = get_metrics(port).await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    }

    /// A source that never exists, to show a dropped one leaves no row.
    struct Never;

    impl wasmhttp_runtime::prometheus::Observed for Never {
        fn observe(&self) -> (wasmhttp_runtime::StatsSnapshot, wasmhttp_runtime::Limits) {
            unreachable!()
        }
    }

    async fn get_metrics(port: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        body
    }
}
