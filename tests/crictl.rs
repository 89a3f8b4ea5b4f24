//! `crictl`, the CRI client operators type on a node, as a real client of our runtime handler: every command
//! of a pod's life, asserted on the output an operator reads. The in-place pod resize of Kubernetes 1.35
//! (`UpdateContainerResources`, then `ContainerStatus` reporting the new resources) is checked here too,
//! since `crictl update` and `crictl inspect` are exactly those two calls.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::cri::*;
use wasmhttp_tests::crictl::{Crictl, pod_json, write_json};
use wasmhttp_tests::get;
use wasmhttp_tests::load::{load, shim_cpu_rate};
use wasmhttp_tests::registry::Registry;

/// A container config as an operator writes it for `crictl create`: the image, `PORT`, and limits.
fn container_json(name: &str, image: &str, port: u16, resources: Value) -> Value {
    serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": image},
        "envs": [{"key": "PORT", "value": port.to_string()}],
        "log_path": format!("{name}.log"),
        "linux": {"resources": resources}
    })
}

/// The line of `crictl ps -a` (the table an operator reads) that shows container `id`.
fn ps_line(crictl: &Crictl, id: &str) -> String {
    let table = crictl.ok(&["ps", "-a"]);
    table
        .lines()
        .find(|l| id.starts_with(l.split_whitespace().next().unwrap_or("-")))
        .unwrap_or_else(|| panic!("{id} is not in crictl ps -a:\n{table}"))
        .to_string()
}

/// Polls `crictl inspect ID` until the container's state is `state`.
fn wait_for_state(crictl: &Crictl, id: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let inspected = crictl.json(&["inspect", id]);
        if inspected["status"]["state"] == state {
            return inspected;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{id} never became {state}: {}",
            inspected["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a test of pods runs on: the clean-up of pod networks, a registry, and a containerd with CRI whose
/// sandbox image is tagged. Dropped in reverse: containerd, the registry, then the networks.
fn cri_node() -> (PodNetworkCleanup, Registry, Containerd) {
    let cleanup = PodNetworkCleanup {
        before: netns_names(),
    };
    let registry = Registry::start();
    let containerd = Containerd::start_with(|dir| cri_config(dir, &registry.host));
    tag_sandbox_image(&containerd);
    (cleanup, registry, containerd)
}

#[test]
fn an_operator_runs_a_wasm_pod_with_crictl() {
    let (cleanup, registry, containerd) = cri_node();
    let crictl = Crictl::new(&containerd);
    let dir = containerd.dir.path();

    // pull, from a registry, and images.
    let mut pushed = Vec::new();
    for name in ["logger", "mem-hog", "cpu-burn", "applets"] {
        let tar = dir.join(format!("{name}.tar"));
        wasmhttp_tests::build_image(name, &format!("wasmhttp/{name}:crictl"), "layer", &tar);
        let reference = registry.push_oci_archive(&tar, &format!("wasmhttp/{name}:crictl"));
        let pulled = crictl.ok(&["pull", &reference]);
        assert!(
            pulled.starts_with("Image is up to date for sha256:"),
            "{pulled}"
        );
        pushed.push(reference);
    }
    let images = crictl.ok(&["images"]);
    assert!(
        images.contains(&format!("{}/wasmhttp/logger", registry.host)),
        "{images}"
    );

    // runp with the wasmhttp handler, pods, inspectp.
    let pod_config = pod_json(dir, "crictl-pod");
    let pod = crictl
        .ok(&["runp", "--runtime", "wasmhttp", &pod_config])
        .trim()
        .to_string();
    let pods = crictl.ok(&["pods", "--id", &pod]);
    let row = pods.lines().nth(1).unwrap_or_else(|| panic!("{pods}"));
    assert!(
        row.contains("Ready") && row.contains("crictl-pod") && row.ends_with("wasmhttp"),
        "crictl pods: {pods}"
    );
    let pod_status = crictl.json(&["inspectp", &pod]);
    let ip = pod_status["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.213.88."), "pod IP {ip}");

    // create and start, ps, logs.
    let limits = serde_json::json!({
        "memory_limit_in_bytes": 64u64 << 20, "cpu_period": 100_000, "cpu_quota": 25_000
    });
    // The logger runs as a non-root user, as pods with `runAsNonRoot` do: CRI still binds its writable
    // /dev/shm, which must not stand in the way.
    let create = |name: &str, image: &str, port: u16| {
        let mut config = container_json(name, image, port, limits.clone());
        if name == "logger" {
            config["linux"]["security_context"] =
                serde_json::json!({"run_as_user": {"value": 1001}});
        }
        let config = write_json(dir, &format!("{name}.json"), &config);
        let id = crictl
            .ok(&["create", &pod, &config, &pod_config])
            .trim()
            .to_string();
        crictl.ok(&["start", &id]);
        id
    };
    let logger = create("logger", &pushed[0], 8081);
    let hog = create("hog", &pushed[1], 8082);
    let burn = create("burn", &pushed[2], 8083);
    let addr = |port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    wait_for_200_at(addr(8081), "/from-crictl");
    wait_for_200_at(addr(8082), "/?mib=1");
    wait_for_200_at(addr(8083), "/?ms=1");
    let line = ps_line(&crictl, &logger);
    assert!(
        line.contains("Running") && line.contains("logger") && line.contains(&pod[..13]),
        "crictl ps: {line}"
    );
    let logs = crictl.logs_holding(&logger, "logger stdout: GET /from-crictl");
    assert!(logs.contains("logger stdout: GET /from-crictl"), "{logs}");

    // stats: the shim's own accounting, as crictl shows it.
    let stats = crictl.json(&["stats", "--id", &logger]);
    let entry = &stats["stats"][0];
    assert_eq!(entry["attributes"]["id"], logger.as_str(), "{stats}");
    let working_set: u64 = entry["memory"]["workingSetBytes"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(working_set > 0, "{stats}");

    // In-place resize: memory down from 64 to 32 MiB, CPU up from 250m to 500m, live.
    let reported = |id: &str| crictl.json(&["inspect", id])["status"]["resources"]["linux"].clone();
    let before = reported(&hog);
    assert_eq!(
        before["memoryLimitInBytes"],
        (64u64 << 20).to_string(),
        "{before}"
    );
    assert_eq!(get(addr(8082), "/?mib=48").status, 200, "48 MiB fits 64");
    crictl.ok(&["update", "--memory", &(32u64 << 20).to_string(), &hog]);
    let over = get(addr(8082), "/?mib=48");
    assert_eq!(
        (over.status, over.body.as_str()),
        (500, "memory limit exceeded\n"),
        "48 MiB is past the new 32"
    );
    assert_eq!(get(addr(8082), "/?mib=8").status, 200, "still serving");
    crictl.ok(&[
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        &burn,
    ]);
    let after = reported(&hog);
    assert_eq!(
        after["memoryLimitInBytes"],
        (32u64 << 20).to_string(),
        "{after}"
    );
    let cpu = reported(&burn);
    assert_eq!(
        (cpu["cpuQuota"].as_str(), cpu["cpuPeriod"].as_str()),
        (Some("50000"), Some("100000")),
        "{cpu}"
    );
    let shim = containerd.shim_pids()[0];
    let burn_addr = addr(8083);
    let loaded = std::thread::spawn(move || load(burn_addr, "/?ms=50", 4, Duration::from_secs(6)));
    // The first second spends the bucket's initial burst; the rate is measured after it.
    std::thread::sleep(Duration::from_secs(1));
    let ((), used) = shim_cpu_rate(shim, || std::thread::sleep(Duration::from_secs(4)));
    let statuses = loaded.join().unwrap();
    println!("FIGURE crictl update to 500m: the pod's shim used {used} under continuous load");
    assert!(statuses.iter().all(|s| *s == 200), "throttled, not failed");
    used.assert_near(0.5, "resized from 0.25 to 0.5 CPU");

    // A command over its memory limit ends as Kubernetes expects of one: exit 137, reason OOMKilled.
    let mut oom = container_json(
        "oom",
        &pushed[3],
        0,
        serde_json::json!({"memory_limit_in_bytes": 15u64 << 20}),
    );
    oom["command"] =
        serde_json::json!(["/app.wasm", "dd", "if=/dev/zero", "of=/dev/null", "bs=20M"]);
    let oom_config = write_json(dir, "oom.json", &oom);
    let oom = crictl
        .ok(&["create", &pod, &oom_config, &pod_config])
        .trim()
        .to_string();
    crictl.ok(&["start", &oom]);
    let ended = wait_for_state(&crictl, &oom, "CONTAINER_EXITED");
    assert_eq!(
        (
            ended["status"]["exitCode"].as_i64(),
            ended["status"]["reason"].as_str()
        ),
        (Some(137), Some("OOMKilled")),
        "{}",
        ended["status"]
    );
    assert!(ps_line(&crictl, &oom).contains("Exited"));

    // exec, as an operator debugs a container and as an exec probe checks one: a command from its image,
    // through CRI's ExecSync and through its streaming Exec.
    let mut shell = container_json("shell", &pushed[3], 0, serde_json::json!({}));
    shell["command"] = serde_json::json!(["/app.wasm", "top"]);
    let shell_config = write_json(dir, "shell.json", &shell);
    let shell = crictl
        .ok(&["create", &pod, &shell_config, &pod_config])
        .trim()
        .to_string();
    crictl.ok(&["start", &shell]);
    let echo = ["/app.wasm", "echo", "-n", "from crictl exec"];
    for mode in [&["exec", "--sync"][..], &["exec"][..]] {
        let said = crictl.ok(&[mode, &[shell.as_str()], &echo].concat());
        assert_eq!(said.trim_end(), "from crictl exec", "crictl {mode:?}");
    }
    let sleep = ["/app.wasm", "sleep", "600"];
    let timed_out = crictl
        .command(
            &[
                &["exec", "--sync", "--timeout", "1", shell.as_str()][..],
                &sleep,
            ]
            .concat(),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&timed_out.stderr);
    assert!(
        !timed_out.status.success() && said.contains("timeout"),
        "{said}"
    );
    // containerd killed the exec that outlived its timeout, and the shim ended it.
    let killed = format!("exec exited container={shell}");
    let started = Instant::now();
    while !containerd
        .log()
        .lines()
        .any(|l| l.contains(&killed) && l.contains("code=137"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the timed-out exec was not killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // stop and rm one container; the others keep serving from the same shim.
    crictl.ok(&["stop", &logger]);
    wait_for_state(&crictl, &logger, "CONTAINER_EXITED");
    assert!(ps_line(&crictl, &logger).contains("Exited"));
    crictl.ok(&["rm", &logger]);
    assert!(!crictl.ok(&["ps", "-a", "-q"]).contains(&logger));
    assert_eq!(get(addr(8082), "/?mib=1").status, 200);
    assert_eq!(containerd.shim_pids().len(), 1, "one shim serves the pod");

    // stopp and rmp: the pod, its containers and its shim are gone, and nothing is left behind.
    crictl.ok(&["stopp", &pod]);
    crictl.ok(&["rmp", &pod]);
    assert_eq!(crictl.ok(&["pods", "-q"]).trim(), "", "no pod is left");
    assert_eq!(
        crictl.ok(&["ps", "-a", "-q"]).trim(),
        "",
        "no container is left"
    );
    containerd.assert_shims_exit();
    assert_eq!(
        netns_names(),
        cleanup.before,
        "the pod's network namespace is gone"
    );
}

#[test]
fn a_test_containerd_dropped_with_a_pod_still_running_leaves_nothing_behind() {
    // As critest leaves a failed spec's pod: the test's containerd goes with the pod still running.
    let (cleanup, _registry, containerd) = cri_node();
    let crictl = Crictl::new(&containerd);
    let dir = containerd.dir.path().to_path_buf();
    let pod_config = pod_json(&dir, "left-running");
    let pod = crictl.ok(&["runp", "--runtime", "wasmhttp", &pod_config]);
    assert!(!pod.trim().is_empty());
    let mounted_inside = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("{}/", dir.display())))
            .count()
    };
    assert!(
        mounted_inside() > 0,
        "the pod's /dev/shm is mounted in the state"
    );
    assert_ne!(
        netns_names(),
        cleanup.before,
        "the pod has a network namespace"
    );
    let shims = containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let socket = shim_socket(shims[0]).expect("the shim server's -socket argument");
    drop(containerd);
    assert_eq!(mounted_inside(), 0, "a mount of the pod's is left");
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(!socket.exists(), "{} is left", socket.display());
    assert_eq!(
        netns_names(),
        cleanup.before,
        "the pod's network namespace is left"
    );
}
