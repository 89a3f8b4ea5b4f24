//! OCI resource limits, `wasmhttp.io/` annotations and the node configuration, enforced inside the engine
//! and proven through a real containerd with the example guests. Each test prints its measured figure on a
//! `FIGURE` line, which `bench/limits.sh` collects into a table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::get;
use wasmhttp_tests::load::*;

const MIB: u64 = 1 << 20;

/// CPU figures are only meaningful when nothing else runs: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn the_shim(containerd: &Containerd) -> i32 {
    let pids = containerd.shim_pids();
    assert_eq!(pids.len(), 1, "expected one shim process: {pids:?}");
    pids[0]
}

#[test]
fn memory_limit_fails_the_request_not_the_service() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "mem-hog");
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "hog",
        port,
        &["--memory-limit", &(64 * MIB).to_string()],
    );
    let addr = loopback(port);
    wait_for_200(addr);
    let shim = the_shim(&containerd);
    let baseline = process_rss(shim);

    assert_eq!(get(addr, "/?mib=32").status, 200, "32 MiB fits in 64 MiB");
    let (reply, peak) = sampling(move || process_rss(shim), || get(addr, "/?mib=100"));
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "memory limit exceeded\n")
    );
    let growth = peak.saturating_sub(baseline);
    println!(
        "FIGURE memory: 100 MiB request under a 64 MiB limit grew the shim by {} MiB",
        growth / MIB
    );
    assert!(growth <= 70 * MIB, "shim RSS grew {} MiB", growth / MIB);

    let (statuses, peak) = sampling(move || process_rss(shim), || burst(addr, "/?mib=10", 20));
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth <= 70 * MIB,
        "20 × 10 MiB grew the shim by {} MiB",
        growth / MIB
    );
    println!(
        "FIGURE memory: 20 concurrent 10 MiB requests, 64 MiB limit: {} × 200, {} × 503, shim grew {} MiB",
        statuses.iter().filter(|s| **s == 200).count(),
        statuses.iter().filter(|s| **s == 503).count(),
        growth / MIB
    );
    assert_eq!(get(addr, "/?mib=32").status, 200, "still serving");

    // Host memory the guest asks for: 20,000 header maps of 48 KiB (~940 MiB) stop at its limit's worth.
    let (reply, peak) = sampling(move || process_rss(shim), || get(addr, "/?fields=20000"));
    assert_eq!(reply.status, 500, "{reply:?}");
    let growth = peak.saturating_sub(baseline);
    println!(
        "FIGURE memory: 20,000 header maps of 48 KiB under a 64 MiB limit grew the shim by {} MiB",
        growth / MIB
    );
    assert!(
        growth <= 2 * 64 * MIB + 16 * MIB,
        "shim RSS grew {} MiB",
        growth / MIB
    );
    assert_eq!(
        metric(&containerd, "hog", "memory.limit_in_bytes"),
        64 * MIB
    );
    // Refused memory growths are counted where cgroups count limit hits (memory failcnt): the 100 MiB
    // request's at least, and any of the burst's refused at the total limit.
    let json = containerd.ctr_ok(&["task", "metrics", "--format", "json", "hog"]);
    let metrics: serde_json::Value = serde_json::from_str(&json).unwrap();
    let failcnt = metrics["memory"]["usage"]["failcnt"].as_u64().unwrap_or(0);
    assert!(failcnt >= 1, "the 100 MiB request was refused: {json}");
    containerd.wait_for_log("memory limit exceeded");
    let log = containerd.log();
    assert!(
        log.lines().any(|l| l.contains("request refused")
            && l.contains("memory limit exceeded")
            && l.contains("service=hog (/app.wasm)")),
        "each refusal is logged with its cause and container: {log}"
    );
    assert!(
        !log.contains("wasm backtrace"),
        "a refusal is one line; the guest's backtrace is for debug level: {log}"
    );
}

#[test]
fn cpu_quota_is_held_within_ten_percent() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "cpu-burn");
    let port = free_port();
    run_service(&containerd, &image, "burn", port, &["--cpus", "0.25"]);
    let addr = loopback(port);
    wait_for_200(addr);
    let shim = the_shim(&containerd);
    let (statuses, used) =
        shim_cpu_rate(shim, || load(addr, "/?ms=50", 4, Duration::from_secs(10)));
    println!("FIGURE cpu quota 0.25: shim used {used} under continuous load for 10 s");
    assert!(statuses.iter().all(|s| *s == 200), "throttled, not killed");
    used.assert_near(0.25, "--cpus 0.25");
}

#[test]
fn a_flood_of_refused_requests_is_held_to_the_cpu_quota() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "echo");
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "flood",
        port,
        &[
            "--cpus",
            "0.25",
            "--annotation",
            "wasmhttp.io/max-request-body=1Ki",
        ],
    );
    let addr = loopback(port);
    wait_for_200(addr);
    let shim = the_shim(&containerd);
    // Each client sends a head announcing a body over the limit: refused with 413 before any guest runs.
    let head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n";
    let (statuses, used) = shim_cpu_rate(shim, || flood(addr, head, 8, Duration::from_secs(10)));
    let rate = used.rate;
    let refused = statuses.iter().filter(|s| **s == 413).count();
    println!(
        "FIGURE 413 flood at cpus 0.25: shim used {rate:.3} CPU for 10 s, answering {refused} requests"
    );
    assert!(refused > 100, "the flood was answered: {refused}");
    assert!(
        statuses.iter().all(|s| *s == 413),
        "only 413s: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 413)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(rate <= 0.275, "quota 0.25, measured {rate:.3} CPU");
    // Held back, not broken: a normal request is still served.
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn cpu_shares_split_a_contended_shim() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "cpu-burn");
    let pod = "io.kubernetes.cri.sandbox-id=shares-pod";
    let (heavy, light) = (free_port(), free_port());
    run_service(
        &containerd,
        &image,
        "heavy",
        heavy,
        &["--annotation", pod, "--cpu-shares", "1024"],
    );
    run_service(
        &containerd,
        &image,
        "light",
        light,
        &["--annotation", pod, "--cpu-shares", "512"],
    );
    wait_for_200(loopback(heavy));
    wait_for_200(loopback(light));
    the_shim(&containerd);
    let usage = |id: &str| metric(&containerd, id, "cpuacct.usage");
    let (heavy_before, light_before) = (usage("heavy"), usage("light"));
    let busy =
        std::thread::spawn(move || load(loopback(light), "/?ms=50", 4, Duration::from_secs(8)));
    load(loopback(heavy), "/?ms=50", 4, Duration::from_secs(8));
    busy.join().unwrap();
    let heavy_used = usage("heavy") - heavy_before;
    let light_used = usage("light") - light_before;
    let ratio = heavy_used as f64 / light_used as f64;
    println!(
        "FIGURE cpu shares 1024:512 in one shim: {:.2} s vs {:.2} s = {ratio:.2}:1",
        heavy_used as f64 / 1e9,
        light_used as f64 / 1e9
    );
    assert!(
        (1.6..=2.4).contains(&ratio),
        "expected 2:1 ±20%, got {ratio:.2}"
    );
}

#[test]
fn annotations_and_node_configuration_apply_and_bad_values_fail_create() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "cpu-burn");
    for (index, (key, value, form)) in [
        ("memory-per-instance", "lots", "a size"),
        ("fuel-per-request", "0", "a positive integer"),
        ("max-concurrency", "many", "a positive integer"),
        ("queue-depth", "-1", "an integer of 0 or more"),
        ("request-timeout", "soon", "a duration"),
        ("max-request-body", "1Xi", "a size"),
        ("allowed-outbound-hosts", "http://x/", "host:port"),
        ("port", "0", "a port number"),
        ("cpus", "1e-300", "at least 1m"),
    ]
    .into_iter()
    .enumerate()
    {
        let annotation = format!("wasmhttp.io/{key}={value}");
        let said = refused_run(
            &containerd,
            &["--annotation", &annotation, &image],
            &format!("bad{index}"),
        );
        assert!(
            said.contains(&format!("wasmhttp.io/{key}")) && said.contains(form),
            "{annotation}: {said}"
        );
    }

    // So is an OCI CPU limit below the least there is (it once passed, and the first throttle panicked).
    let said = refused_run(
        &containerd,
        &["--cpu-quota", "1", "--cpu-period", "1000000", &image],
        "starved",
    );
    assert!(
        said.contains("linux.resources.cpu: quota 1 / period 1000000"),
        "{said}"
    );

    // A node configuration that does not parse names its file and line.
    let bad = containerd.dir.path().join("bad-node.toml");
    std::fs::write(&bad, "[defaults]\nrequest_timeout = \"soon\"\n").unwrap();
    let said = refused_run(
        &containerd,
        &["--runtime-config-path", bad.to_str().unwrap(), &image],
        "badnode",
    );
    assert!(
        said.contains(&format!("{}:2", bad.display()))
            && said.contains("request_timeout")
            && said.contains("is not a duration"),
        "{said}"
    );

    // Valid annotations take effect: the port, a request timeout, a per-request fuel cap; unknown keys warn.
    let port = free_port();
    let annotations = [
        format!("wasmhttp.io/port={port}"),
        "wasmhttp.io/request-timeout=200ms".to_string(),
        "wasmhttp.io/no-such-setting=1".to_string(),
    ];
    let mut args = vec!["--net-host"];
    for a in &annotations {
        args.extend(["--annotation", a.as_str()]);
    }
    args.extend([image.as_str(), "annotated"]);
    assert!(ctr_run(&containerd, "-d", &args).status.success());
    let addr = loopback(port);
    wait_for_200(addr);
    let started = Instant::now();
    let reply = get(addr, "/?ms=3000");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (504, "deadline exceeded\n")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    containerd.wait_for_log("unknown wasmhttp annotation");

    let port = free_port();
    let fuel = "wasmhttp.io/fuel-per-request=300000000".to_string();
    run_service(
        &containerd,
        &image,
        "fueled",
        port,
        &["--annotation", &fuel],
    );
    let addr = loopback(port);
    wait_for_200(addr);
    let reply = get(addr, "/?ms=3000");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "fuel exhausted\n")
    );

    // The node configuration's defaults apply where the spec says nothing.
    let node = containerd.dir.path().join("node.toml");
    std::fs::write(
        &node,
        "[defaults]\nrequest-timeout = \"150ms\"\nmemory = \"32Mi\"\n[ceilings]\nqueue-depth = 4\n",
    )
    .unwrap();
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "noded",
        port,
        &["--runtime-config-path", node.to_str().unwrap()],
    );
    let addr = loopback(port);
    wait_for_200(addr);
    assert_eq!(get(addr, "/?ms=3000").status, 504);
    assert_eq!(
        metric(&containerd, "noded", "memory.limit_in_bytes"),
        32 * MIB
    );

    // The node's ceilings bound what an annotation may ask for; the error names the key and the ceiling.
    let node_args = ["--runtime-config-path", node.to_str().unwrap()];
    let said = refused_run(
        &containerd,
        &[
            &node_args[..],
            &["--annotation", "wasmhttp.io/queue-depth=10", &image],
        ]
        .concat(),
        "greedy",
    );
    assert!(
        said.contains("wasmhttp.io/queue-depth=10") && said.contains("ceiling queue-depth = 4"),
        "{said}"
    );

    // Without a ceiling, the node's default is the most an annotation may ask for, OCI field or not.
    let said = refused_run(
        &containerd,
        &[
            &node_args[..],
            &["--annotation", "wasmhttp.io/request-timeout=1h", &image],
        ]
        .concat(),
        "patient",
    );
    assert!(
        said.contains("wasmhttp.io/request-timeout=1h")
            && said.contains("looser than the node's default (150ms)"),
        "{said}"
    );
}

#[path = "limits/update.rs"]
mod update;
