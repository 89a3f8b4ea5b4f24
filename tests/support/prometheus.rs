//! A real Prometheus server for tests: Debian's `prometheus` on a free loopback port, scraping the targets
//! the test names every second, storage in a temp dir, killed when dropped.

use crate::KillOnDrop;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus of the test's own.
pub struct Prometheus {
    /// Config and storage.
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`: its HTTP API.
    pub addr: String,
    _process: KillOnDrop,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) each second, and waits until it
    /// answers.
    pub fn start(targets: &[String]) -> Self {
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Prometheus::start_with(&format!(
            "scrape_configs:\n  - job_name: wasmhttp\n    static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        ))
    }

    /// Starts Prometheus with `scrape_configs` (YAML, the whole section), scraping each second.
    pub fn start_with(scrape_configs: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmhttp-prometheus-")
            .tempdir()
            .unwrap();
        let addr = format!("127.0.0.1:{}", crate::containerd::free_port());
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n{scrape_configs}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}/data", dir.path().display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus is not installed ({e}): run scripts/test.sh, which installs it")
            });
        let prometheus = Prometheus {
            dir,
            addr,
            _process: KillOnDrop(child),
        };
        let started = Instant::now();
        let addr: std::net::SocketAddr = prometheus.addr.parse().unwrap();
        while std::net::TcpStream::connect(addr).is_err()
            || crate::get(addr, "/-/ready").status != 200
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus did not start: {}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector `query` returns now, as `(labels, value)` pairs.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let target = format!("/api/v1/query?query={}", encode(query));
        let answer = crate::get(self.addr.parse().unwrap(), &target);
        assert_eq!(answer.status, 200, "query {query}: {}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let value = row["value"][1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                (row["metric"].clone(), value)
            })
            .collect()
    }

    /// Polls `query` (for up to 30 s) until `done` accepts its result, and returns that result.
    pub fn wait_for(
        &self,
        query: &str,
        done: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let started = Instant::now();
        loop {
            let result = self.query(query);
            if done(&result) {
                return result;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{query} never gave what was expected; last: {result:?}\ntargets: {}",
                crate::get(self.addr.parse().unwrap(), "/api/v1/targets").body
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Percent-encodes a query string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scrape job of `examples/kubernetes/prometheus-scrape.yml` with file discovery from `pods` (a JSON file
/// of target groups carrying `__meta_kubernetes_*` labels) in place of Kubernetes discovery, which Debian's
/// Prometheus is built without; its relabelling rules are the shipped ones.
pub fn shipped_pod_job(pods: &std::path::Path) -> String {
    let shipped = std::fs::read_to_string(
        crate::workspace().join("examples/kubernetes/prometheus-scrape.yml"),
    )
    .unwrap();
    let discovery = "    kubernetes_sd_configs:\n      - role: pod\n";
    assert!(
        shipped.contains(discovery),
        "the shipped job discovers pods"
    );
    shipped.replace(
        discovery,
        &format!(
            "    file_sd_configs:\n      - files: ['{}']\n",
            pods.display()
        ),
    )
}

/// A file discovery target group describing a running pod as Kubernetes discovery would: its IP and its
/// `prometheus.io/*` annotations.
pub fn pod_target(ip: &str, annotations: &[(&str, &str)]) -> serde_json::Value {
    let mut labels = serde_json::json!({
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
    });
    for (key, value) in annotations {
        let name = key.replace(['.', '/', '-'], "_");
        labels[format!("__meta_kubernetes_pod_annotation_{name}")] = serde_json::json!(value);
    }
    // The address discovery gives before relabelling: the pod IP and its first container port.
    serde_json::json!({"targets": [format!("{ip}:8080")], "labels": labels})
}
