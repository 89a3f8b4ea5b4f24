//! Update (the Tasks API's, as `ctr task update` and CRI's UpdateContainerResources send it): a running
//! service takes new limits on its next requests, a container not yet started runs under them, and a running
//! command, whose limits are fixed when it starts, refuses them.

use super::*;

#[test]
fn update_changes_limits_under_load() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "cpu-burn");
    let port = free_port();
    // A queue is looser than the default (none), so the node must allow one.
    let node = containerd.dir.path().join("node.toml");
    std::fs::write(&node, "[ceilings]\nqueue-depth = 2\n").unwrap();
    run_service(
        &containerd,
        &image,
        "live",
        port,
        &[
            "--runtime-config-path",
            node.to_str().unwrap(),
            "--cpus",
            "1",
            "--annotation",
            "wasmhttp.io/queue-depth=2",
            "--annotation",
            "wasmhttp.io/max-concurrency=3",
        ],
    );
    let addr = loopback(port);
    wait_for_200(addr);
    let shim = the_shim(&containerd);

    // An Update that leaves pids.limit alone keeps the annotation's concurrency.
    assert_eq!(metric(&containerd, "live", "pids.limit"), 3);
    update_resources(&containerd, "live", r#"{"memory":{"limit":268435456}}"#).unwrap();
    assert_eq!(
        metric(&containerd, "live", "pids.limit"),
        3,
        "the annotation survives"
    );
    assert_eq!(memory_limit(&containerd, "live"), 256 << 20);

    // pids.limit arrives by Update, and changes the field the annotation overrode: the Update wins.
    // 8 slow requests, 4 run, 2 wait in the queue, 2 get 503.
    update_resources(&containerd, "live", r#"{"pids":{"limit":4}}"#).unwrap();
    assert_eq!(metric(&containerd, "live", "pids.limit"), 4);
    let socket = containerd.socket();
    let (statuses, peak) = sampling(
        move || metric_at(&socket, "live", "pids.current"),
        || burst(addr, "/?ms=600", 8),
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    println!(
        "FIGURE pids.limit 4, queue 2, 8 concurrent: {ok} × 200, {refused} × 503, at most {peak} running"
    );
    assert_eq!((ok, refused), (6, 2), "{statuses:?}");
    assert!((1..=4).contains(&peak), "{peak} instances ran at once");

    // The quota drops from 1.0 to 0.25 while the service is loaded.
    let loaded = std::thread::spawn(move || load(addr, "/?ms=50", 4, Duration::from_secs(9)));
    std::thread::sleep(Duration::from_secs(1));
    let ((), before) = shim_cpu_rate(shim, || std::thread::sleep(Duration::from_secs(2)));
    update_resources(
        &containerd,
        "live",
        r#"{"cpu":{"quota":25000,"period":100000}}"#,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let ((), after) = shim_cpu_rate(shim, || std::thread::sleep(Duration::from_secs(3)));
    let statuses = loaded.join().unwrap();
    println!("FIGURE update quota 1.0 → 0.25 under load: {before} before, {after} from 1 s after");
    assert!(
        before.rate + before.denied > 0.8,
        "quota 1.0 should allow ~1 CPU, used {before}"
    );
    after.assert_near(0.25, "after the update to 0.25");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503));

    // -1 removes a limit, as `runc update` writes `max` for it: what stands in for an unset one applies
    // again, the annotation's concurrency and the built-in default memory limit.
    update_resources(
        &containerd,
        "live",
        r#"{"memory":{"limit":-1},"pids":{"limit":-1}}"#,
    )
    .unwrap();
    assert_eq!(memory_limit(&containerd, "live"), 512 << 20);
    assert_eq!(metric(&containerd, "live", "pids.limit"), 3);

    let bad = update_resources(&containerd, "live", "not json").unwrap_err();
    assert!(bad.contains("LinuxResources"), "{bad}");
}

/// containerd's API allows an Update between Create and Start: the service Start runs is held to it. A
/// command's limits are fixed once it runs, so an Update then is refused rather than reported and ignored.
#[test]
fn an_update_before_start_holds_and_a_running_command_refuses_one() {
    let _turn = exclusive();
    let containerd = Containerd::start();
    let image = import_example(&containerd, "cpu-burn");
    let port = free_port();
    let port_env = format!("PORT={port}");
    containerd.ctr_ok(&[
        "container",
        "create",
        "--runtime",
        RUNTIME,
        "--net-host",
        "--env",
        &port_env,
        &image,
        "early",
    ]);
    create_task(&containerd, "early").unwrap();
    assert_eq!(task_status(&containerd, "early"), "CREATED");
    update_resources(&containerd, "early", r#"{"pids":{"limit":1}}"#).unwrap();
    start_task(&containerd, "early").unwrap();
    let addr = loopback(port);
    wait_for_200(addr);
    // Three slow requests at once: one runs and, with no queue, two get 503.
    let mut statuses = burst(addr, "/?ms=600", 3);
    statuses.sort();
    assert_eq!(statuses, [200, 503, 503]);
    kill_now(&containerd, "early");

    let applets = import_example(&containerd, "applets");
    let output = ctr_run(
        &containerd,
        "-d",
        &[
            "--net-host",
            &applets,
            "sleeper",
            "/app.wasm",
            "sleep",
            "60",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    wait_for_status(&containerd, "sleeper", "RUNNING");
    let refused = update_resources(&containerd, "sleeper", r#"{"pids":{"limit":1}}"#).unwrap_err();
    assert!(
        refused.contains("whose limits are fixed when it starts"),
        "{refused}"
    );
    kill_now(&containerd, "sleeper");
}

/// The memory limit `ctr task metrics` shows for `id`, in cgroup v1's or v2's terms.
fn memory_limit(containerd: &Containerd, id: &str) -> u64 {
    let metrics = containerd.ctr(&["task", "metrics", id]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let v1 = metrics.contains("memory.limit_in_bytes");
    metric_in(
        &metrics,
        if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.usage_limit"
        },
    )
}
