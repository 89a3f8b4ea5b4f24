//! Prometheus metrics as an operator meets them: Debian's `prometheus` scrapes a container's `/metrics`
//! inside its own network namespace, PromQL sees the known mix of answers, and `ctr task metrics`, the
//! endpoint and the shim's exit log line report the same values.

use std::net::SocketAddr;
use std::time::Duration;
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::get;
use wasmhttp_tests::netns::NetNs;
use wasmhttp_tests::prometheus::{Prometheus, pod_target, shipped_pod_job};

/// The value of the series `name{labels…}` in a Prometheus text exposition (every label given must match).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .find(|line| {
            line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

/// Sends the known mix to `counter-p3` (max-concurrency 1, no queue, 400 ms timeout, 32 MiB): five 200s,
/// a trap and a memory refusal (500), a deadline (504) and a request refused while that one held the only
/// slot (503).
fn known_mix(addr: SocketAddr) {
    assert!(wait_for_200(addr).starts_with("count: "));
    for _ in 0..4 {
        assert_eq!(get(addr, "/").status, 200);
    }
    assert_eq!(get(addr, "/trap").status, 500);
    assert_eq!(get(addr, "/alloc/48").status, 500);
    let slow = std::thread::spawn(move || get(addr, "/sleep/3000").status);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(get(addr, "/").status, 503, "the only slot is taken");
    assert_eq!(slow.join().unwrap(), 504);
}

#[test]
fn prometheus_scrapes_a_container_in_its_namespace_and_every_export_agrees() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "counter-p3");
    let netns = NetNs::create("wasmhttp-metrics", "10.213.84", "whmet");
    let (port, metrics_port) = (free_port(), free_port());
    let args = [
        format!("--with-ns=network:{}", netns.path()),
        format!("--env=PORT={port}"),
        "--memory-limit=33554432".into(),
        format!("--annotation=wasmhttp.io/metrics-port={metrics_port}"),
        "--annotation=wasmhttp.io/max-concurrency=1".into(),
        "--annotation=wasmhttp.io/request-timeout=400ms".into(),
        image.clone(),
        "m1".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = ctr_run(&containerd, "-d", &args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target = format!("{}.2:{metrics_port}", netns.prefix);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err(),
        "/metrics is served in the container's namespace, not the host's"
    );
    known_mix(format!("{}.2:{port}", netns.prefix).parse().unwrap());

    let prometheus = Prometheus::start(std::slice::from_ref(&target));
    let by_cause = prometheus.wait_for(
        "sum by (code, cause) (wasmhttp_requests_total{container_id=\"m1\"}) > 0",
        |rows| rows.iter().map(|(_, v)| v).sum::<f64>() >= 9.0,
    );
    let mut seen: Vec<String> = by_cause
        .iter()
        .map(|(labels, value)| {
            format!("{} {} {value}", labels["code"], labels["cause"]).replace('"', "")
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "2xx guest 5",
            "5xx deadline 1",
            "5xx memory 1",
            "5xx over-capacity 1",
            "5xx trap 1"
        ]
    );
    let slow = prometheus
        .query("wasmhttp_request_duration_seconds_bucket{container_id=\"m1\",le=\"0.25\"}");
    let all = prometheus.query("wasmhttp_request_duration_seconds_count{container_id=\"m1\"}");
    assert_eq!(all[0].1, 9.0, "{all:?}");
    assert!(slow[0].1 <= 8.0, "the 504 took 400 ms: {slow:?}");

    // One source: the endpoint, `ctr task metrics` and the exit log line say the same.
    let scrape = || get(target.parse().unwrap(), "/metrics").body;
    let before = scrape();
    let json = containerd.ctr_ok(&["task", "metrics", "--format", "json", "m1"]);
    let after = scrape();
    let task: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cpu_ns = task["cpu"]["usage"]["total"]
        .as_u64()
        .or_else(|| task["cpu"]["usage_usec"].as_u64().map(|us| us * 1000))
        .unwrap_or_else(|| panic!("no CPU usage in {json}"));
    let cpu = |text: &str| (sample(text, "wasmhttp_cpu_seconds_total", &[]) * 1e9).round() as u64;
    assert!(
        cpu(&before) <= cpu_ns + 1000 && cpu_ns <= cpu(&after) + 1000,
        "ctr's CPU {cpu_ns} ns is not the endpoint's {} – {}",
        cpu(&before),
        cpu(&after)
    );
    let refusals = task["memory"]["usage"]["failcnt"]
        .as_u64()
        .or_else(|| task["memory_events"]["max"].as_u64())
        .unwrap_or_default();
    assert_eq!(
        refusals as f64,
        sample(&after, "wasmhttp_memory_refusals_total", &[])
    );
    assert!(refusals >= 1, "{json}");

    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "m1"]);
    wait_for_status(&containerd, "m1", "STOPPED");
    containerd.wait_for_log("requests=9");
    let log = containerd.log();
    let exited = log
        .lines()
        .find(|l| l.contains("exited") && l.contains("requests=9"))
        .unwrap();
    for field in [
        "served=5",
        "trap=1",
        "memory=1",
        "deadline=1",
        "over_capacity=1",
    ] {
        assert!(exited.contains(field), "{field} not in {exited}");
    }
    let stopped = scrape();
    assert_eq!(
        sample(
            &stopped,
            "wasmhttp_requests_total",
            &["cause=\"guest\"", "code=\"2xx\""]
        ),
        5.0,
        "a stopped container keeps its counts until it is deleted"
    );
    containerd.ctr_ok(&["task", "rm", "m1"]);
    containerd.ctr_ok(&["container", "rm", "m1"]);
    containerd.assert_shims_exit();
}

#[test]
fn a_metrics_port_in_use_fails_create_naming_the_annotation() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let metrics_port = taken.local_addr().unwrap().port();
    let annotation = format!("wasmhttp.io/metrics-port={metrics_port}");
    let port_env = format!("PORT={}", free_port());
    let output = ctr_run(
        &containerd,
        "-d",
        &[
            "--net-host",
            "--env",
            &port_env,
            "--annotation",
            &annotation,
            &image,
            "clash",
        ],
    );
    let _ = containerd.ctr(&["container", "rm", "clash"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains(&format!(
            "annotation {annotation}: metrics port {metrics_port}"
        )) && err.contains("in use"),
        "{err}"
    );
    let same = format!("wasmhttp.io/port={metrics_port}");
    let output = ctr_run(
        &containerd,
        "-d",
        &[
            "--net-host",
            "--annotation",
            &same,
            "--annotation",
            &annotation,
            &image,
            "same",
        ],
    );
    let _ = containerd.ctr(&["container", "rm", "same"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("is the service's own port"), "{err}");
    containerd.assert_shims_exit();
}

/// A pod is scraped like any other: its `wasmhttp.io/metrics-port` pod annotation (passed through by the
/// runtime's `pod_annotations`) opens `/metrics` at the pod IP, the series carry the pod's namespace, name
/// and container name and count the known mix (the container's own annotations set its limits), and CRI's
/// `ContainerStats` (here `crictl stats`) reads the same CPU time.
#[test]
fn prometheus_scrapes_a_pod_by_its_ip_through_cri() {
    use wasmhttp_tests::cri::*;
    use wasmhttp_tests::crictl::{Crictl, write_json};
    let cleanup = PodNetworkCleanup {
        before: netns_names(),
    };
    let registry = wasmhttp_tests::registry::Registry::start();
    let containerd = Containerd::start_with(|dir| cri_config(dir, &registry.host));
    tag_sandbox_image(&containerd);
    let image = import_example_in(&containerd, "k8s.io", "counter-p3");
    let crictl = Crictl::new(&containerd);
    let dir = containerd.dir.path();
    let log_dir = dir.join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let pod_config = write_json(
        dir,
        "pod.json",
        &serde_json::json!({
            "metadata": {"name": "scraped", "namespace": "shop", "uid": "scraped-uid", "attempt": 0},
            "hostname": "scraped",
            "log_directory": log_dir.display().to_string(),
            "annotations": {
                "wasmhttp.io/metrics-port": "9464",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9464"
            },
            "linux": {}
        }),
    );
    let pod = crictl
        .ok(&["runp", "--runtime", "wasmhttp", &pod_config])
        .trim()
        .to_string();
    let ip = crictl.json(&["inspectp", &pod])["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let container = write_json(
        dir,
        "counter.json",
        &serde_json::json!({
            "metadata": {"name": "counter"},
            "image": {"image": image},
            "envs": [{"key": "PORT", "value": "8080"}],
            "log_path": "counter.log",
            "annotations": {
                "wasmhttp.io/max-concurrency": "1",
                "wasmhttp.io/request-timeout": "400ms"
            },
            "linux": {"resources": {"memory_limit_in_bytes": 32u64 << 20}}
        }),
    );
    let id = crictl
        .ok(&["create", &pod, &container, &pod_config])
        .trim()
        .to_string();
    crictl.ok(&["start", &id]);
    known_mix(format!("{ip}:8080").parse().unwrap());

    // Prometheus finds the pod with the shipped scrape job (examples/kubernetes/prometheus-scrape.yml), by
    // its annotations; a pod without prometheus.io/scrape is left alone.
    let target = format!("{ip}:9464");
    let pods = dir.join("pods.json");
    let annotated = [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "9464"),
    ];
    let listed = serde_json::json!([
        pod_target(&ip, &annotated),
        pod_target("10.213.88.250", &[("prometheus.io/port", "9464")]),
    ]);
    std::fs::write(&pods, listed.to_string()).unwrap();
    let prometheus = Prometheus::start_with(&shipped_pod_job(&pods));
    let up = prometheus.wait_for("up{job=\"wasmhttp-pods\"} == 1", |rows| !rows.is_empty());
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].0["instance"], target.as_str(), "{up:?}");
    let rows = prometheus.wait_for(
        "wasmhttp_requests_total{namespace=\"shop\",pod=\"scraped\",container=\"counter\"} > 0",
        |rows| rows.len() == 5,
    );
    let mut seen: Vec<String> = rows
        .iter()
        .map(|(labels, value)| {
            format!("{} {value} {}", labels["cause"], labels["container_id"]).replace('"', "")
        })
        .collect();
    seen.sort();
    let expected = [
        "deadline 1",
        "guest 5",
        "memory 1",
        "over-capacity 1",
        "trap 1",
    ];
    assert_eq!(seen, expected.map(|e| format!("{e} {id}")));

    let scrape = || get(target.parse().unwrap(), "/metrics").body;
    let cpu = |text: &str| (sample(text, "wasmhttp_cpu_seconds_total", &[]) * 1e9).round() as u64;
    let before = cpu(&scrape());
    let stats = crictl.json(&["stats", "--id", &id]);
    let after = cpu(&scrape());
    let cri_ns: u64 = stats["stats"][0]["cpu"]["usageCoreNanoSeconds"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no CPU in crictl stats: {stats}"));
    assert!(
        before <= cri_ns + 1000 && cri_ns <= after + 1000,
        "CRI's CPU {cri_ns} ns is not the endpoint's {before} – {after}"
    );
    crictl.ok(&["stopp", &pod]);
    crictl.ok(&["rmp", &pod]);
    containerd.assert_shims_exit();
    drop(cleanup);
}
