//! The shim through a real containerd (Debian's 1.6) driven with `ctr`, as an operator drives it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::netns::NetNs;
use wasmhttp_tests::{KillOnDrop, get};

#[test]
fn hello_lifecycle_run_serve_metrics_kill_delete() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "hello1",
        port,
        &["--memory-limit", "67108864"],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(wait_for_200(addr), "Hello from wasmhttp!\n");
    assert_eq!(task_status(&containerd, "hello1"), "RUNNING");

    let metrics = containerd.ctr_ok(&["task", "metrics", "hello1"]);
    let value = |key: &str| metric_in(&metrics, key);
    assert!(value("memory.usage_in_bytes") > 0, "{metrics}");
    assert_eq!(value("memory.limit_in_bytes"), 64 << 20, "{metrics}");
    assert!(value("cpuacct.usage") > 0, "{metrics}");

    containerd.ctr_ok(&["task", "kill", "hello1"]);
    wait_for_status(&containerd, "hello1", "STOPPED");
    let deleted = containerd.ctr(&["task", "delete", "hello1"]);
    let said = String::from_utf8_lossy(&deleted.stderr);
    assert!(
        said.contains("143"),
        "SIGTERM gives exit status 143: {said}"
    );
    containerd.ctr_ok(&["container", "rm", "hello1"]);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is gone"
    );
}

#[test]
fn a_command_returns_its_exit_code_and_output_through_ctr() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello-cli");
    let output = ctr_run(
        &containerd,
        "--rm",
        &["--env", "WHO=ctr", &image, "cli1", "/app.wasm", "42"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(42),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("arg[1]=42") && stdout.contains("env WHO=ctr"),
        "{stdout}"
    );
    assert!(
        containerd
            .ctr_ok(&["container", "ls", "-q"])
            .trim()
            .is_empty(),
        "--rm removed it"
    );
}

#[test]
fn guest_logs_reach_the_log_file_and_two_services_run_at_once() {
    let containerd = Containerd::start();
    let logger = import_example(&containerd, "logger");
    let hello = import_example(&containerd, "hello");
    let logs = containerd.dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let log = logs.join("logger.log");
    let log_uri = format!("file://{}", log.display());
    // A log file outside containerd's directories is one the node lists for the shim to write.
    let node = node_config_listing(&logs);
    let (p1, p2) = (free_port(), free_port());
    run_service(
        &containerd,
        &logger,
        "logger1",
        p1,
        &[
            "--log-uri",
            &log_uri,
            "--runtime-config-path",
            node.to_str().unwrap(),
        ],
    );
    run_service(&containerd, &hello, "hello2", p2, &[]);
    wait_for_200(([127, 0, 0, 1], p1).into());
    assert_eq!(
        wait_for_200(([127, 0, 0, 1], p2).into()),
        "Hello from wasmhttp!\n"
    );
    let text = log_holding(&log, &["logger stdout: GET /", "logger stderr: GET /"]);
    assert!(
        text.contains("logger stdout: GET /") && text.contains("logger stderr: GET /"),
        "{text}"
    );
}

#[test]
fn a_wasi_03_service_runs_with_limits_logs_and_metrics_through_ctr() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "counter-p3");
    let port = free_port();
    let annotation = "wasmhttp.io/max-instance-concurrency=8";
    run_service(
        &containerd,
        &image,
        "counter1",
        port,
        &["--memory-limit", "33554432", "--annotation", annotation],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(wait_for_200(addr).starts_with("count: "));
    let sleepers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep/300").status))
        .collect();
    assert!(sleepers.into_iter().all(|s| s.join().unwrap() == 200));
    let over = get(addr, "/alloc/48");
    assert_eq!(
        (over.status, over.body.as_str()),
        (500, "memory limit exceeded\n")
    );
    assert!(
        wait_for_200(addr).starts_with("count: "),
        "a fresh instance serves"
    );

    let json = containerd.ctr_ok(&["task", "metrics", "--format", "json", "counter1"]);
    let metrics: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        metrics["memory"]["usage"]["limit"].as_u64(),
        Some(32 << 20),
        "{json}"
    );
    // Like cgroups' failcnt, every refused growth counts; the guest's allocator may retry a smaller one.
    assert!(
        metrics["memory"]["usage"]["failcnt"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{json}"
    );
    assert!(
        metrics["cpu"]["usage"]["total"].as_u64() > Some(0),
        "{json}"
    );
    containerd.wait_for_log("memory limit exceeded");
    let log = containerd.log();
    assert!(
        log.lines().any(|l| l.contains("request refused")
            && l.contains("memory limit exceeded")
            && l.contains("service=counter1")),
        "{log}"
    );
    containerd.ctr_ok(&["task", "kill", "counter1"]);
    wait_for_status(&containerd, "counter1", "STOPPED");
    containerd.ctr(&["task", "delete", "counter1"]);
    containerd.ctr_ok(&["container", "rm", "counter1"]);
}

#[test]
fn bad_images_volumes_exec_and_signals_are_refused_with_the_reason() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let output = ctr_run(&containerd, "--rm", &[&image, "bad1", "/missing.wasm"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("process.args[0] /missing.wasm does not exist"),
        "{stderr}"
    );
    let _ = containerd.ctr(&["container", "rm", "bad1"]);

    // A service needs a port to be told of; a command is given PORT as one more variable (tests/cri.rs).
    let said = refused_run(&containerd, &["--env", "PORT=0", &image], "bad2");
    assert!(
        said.contains("process.env PORT=\"0\" is invalid: expected a port number"),
        "{said}"
    );

    // A volume the guest cannot be given fails Create, naming it, rather than starting without it.
    let volumes = tempfile::tempdir().unwrap();
    let file = volumes.path().join("app.conf");
    std::fs::write(&file, "x").unwrap();
    let missing = volumes.path().join("missing");
    for (source, destination, options, why, id) in [
        (&file, "/etc/app.conf", "rw", "is a writable file", "bad3"),
        (&missing, "/data", "ro", "No such file or directory", "bad4"),
    ] {
        let mount = format!(
            "type=bind,src={},dst={destination},options=rbind:{options}",
            source.display()
        );
        let said = refused_run(&containerd, &["--mount", &mount, &image], id);
        let named = format!("the mount at {destination} (source {})", source.display());
        assert!(said.contains(&named) && said.contains(why), "{said}");
    }
    let tmpfs = ["--mount", "type=tmpfs,src=tmpfs,dst=/scratch", &image];
    let said = refused_run(&containerd, &tmpfs, "bad5");
    assert!(
        said.contains("the tmpfs mount at /scratch cannot be given to a WASI guest"),
        "{said}"
    );

    let port = free_port();
    run_service(&containerd, &image, "hello3", port, &[]);
    wait_for_200(([127, 0, 0, 1], port).into());
    // An exec runs a command from the rootfs (tests/exec.rs); this image has none but the service.
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "sh", "hello3", "/bin/sh"]);
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(
        !exec.status.success()
            && stderr.contains("process.args[0] /bin/sh does not exist in the container's rootfs"),
        "{stderr}"
    );

    containerd.ctr_ok(&["task", "pause", "hello3"]);
    assert_eq!(task_status(&containerd, "hello3"), "PAUSED");
    let paused = get(([127, 0, 0, 1], port).into(), "/");
    assert_eq!(
        (paused.status, paused.body.as_str()),
        (503, "over capacity\n"),
        "a paused service admits nothing"
    );
    containerd.ctr_ok(&["task", "resume", "hello3"]);
    assert_eq!(task_status(&containerd, "hello3"), "RUNNING");
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/").status, 200);

    // The guest is a process without signal handlers: a signal ignored by default leaves it serving; one
    // that would freeze a process, or a number that is no signal, is refused with the reason.
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGWINCH", "hello3"]);
    assert_eq!(task_status(&containerd, "hello3"), "RUNNING");
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/").status, 200);
    for (signal, why) in [
        ("SIGSTOP", "SIGSTOP would stop a process"),
        ("65", "signal 65 is not a signal"),
    ] {
        let kill = containerd.ctr(&["task", "kill", "--signal", signal, "hello3"]);
        let stderr = String::from_utf8_lossy(&kill.stderr);
        assert!(!kill.status.success() && stderr.contains(why), "{stderr}");
    }
    assert_eq!(task_status(&containerd, "hello3"), "RUNNING");
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/").status, 200);
}

#[test]
fn a_killed_shim_is_reported_exited_and_a_containerd_restart_keeps_services() {
    let mut containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let (p1, p2) = (free_port(), free_port());
    run_service(&containerd, &image, "victim", p1, &[]);
    wait_for_200(([127, 0, 0, 1], p1).into());
    let shims = containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(containerd.broker_pids().len(), 1, "the shim's broker");
    let shim_socket = shim_socket(shims[0]).expect("the shim server's -socket argument");
    assert!(shim_socket.exists());
    let events_log = containerd.dir.path().join("events.log");
    let events = watch_events(&containerd, &events_log);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices the dead shim, runs its `delete` action, and reports the task exited (killed: 137).
    let started = Instant::now();
    let exit_line = wait_for_exit_event(&events_log, "victim");
    drop(events);
    assert!(exit_line.contains("\"exit_status\":137"), "{exit_line}");
    // Its broker saw the server's end of their pairs close, and ended too.
    while !containerd.broker_pids().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the killed shim's broker still runs: {:?}",
            containerd.broker_pids()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = containerd.ctr(&["task", "delete", "victim"]);
    containerd.ctr_ok(&["container", "rm", "victim"]);
    // Removed by the shim's `delete` action, which containerd runs for the dead shim, sometimes while the
    // dying shim still holds its listener (bench/killed-shim.sh). CI once found the socket still there at this
    // point, when a connect alone decided; the wait and the listeners in the message tell a late removal
    // from one that never happens.
    let removed_by = Instant::now() + Duration::from_secs(5);
    while shim_socket.exists() && Instant::now() < removed_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    if shim_socket.exists() {
        let listeners = Command::new("ss").arg("-xlp").output().unwrap();
        let on_socket: Vec<String> = String::from_utf8_lossy(&listeners.stdout)
            .lines()
            .filter(|l| l.contains(&*shim_socket.to_string_lossy()))
            .map(str::to_string)
            .collect();
        let cleanup: Vec<String> = containerd
            .log()
            .lines()
            .filter(|l| l.contains("clean") || l.contains("shim socket"))
            .map(str::to_string)
            .collect();
        panic!(
            "the dead shim's socket {} is not removed; shim pid {} still exists: {}; listening on it: \
             {on_socket:?}; containerd's log of the clean-up: {cleanup:#?}",
            shim_socket.display(),
            shims[0],
            std::path::Path::new(&format!("/proc/{}", shims[0])).exists()
        );
    }
    assert!(
        containerd
            .ctr_ok(&["container", "ls", "-q"])
            .trim()
            .is_empty()
    );

    run_service(&containerd, &image, "survivor", p2, &[]);
    let addr: SocketAddr = ([127, 0, 0, 1], p2).into();
    wait_for_200(addr);
    containerd.restart();
    assert_eq!(
        get(addr, "/").status,
        200,
        "the service kept answering across the restart"
    );
    assert_eq!(task_status(&containerd, "survivor"), "RUNNING");
    // The broker reaches the restarted containerd: the survivor's exit is published.
    let events = watch_events(&containerd, &events_log);
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "survivor"]);
    let exit_line = wait_for_exit_event(&events_log, "survivor");
    drop(events);
    assert!(exit_line.contains("\"exit_status\":137"), "{exit_line}");
}

#[test]
fn a_test_containerd_dropped_with_a_service_still_running_leaves_no_shim_socket() {
    // As critest leaves a failed spec's pod behind: a task in a namespace the harness does not clean.
    let namespace = "left-running";
    let containerd = Containerd::start();
    let image = import_example_in(&containerd, namespace, "hello");
    let port = free_port();
    let port_env = format!("PORT={port}");
    let ran = ctr_run_in(
        &containerd,
        namespace,
        "-d",
        &["--net-host", "--env", &port_env, &image, "left"],
    );
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    wait_for_200(([127, 0, 0, 1], port).into());
    let shims = containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let socket = shim_socket(shims[0]).expect("the shim server's -socket argument");
    drop(containerd);
    assert!(
        !socket.exists(),
        "{} outlived the test's containerd and its shim",
        socket.display()
    );
}

/// `ctr events` of `containerd`, written to `log` (emptied) until dropped.
fn watch_events(containerd: &Containerd, log: &std::path::Path) -> KillOnDrop {
    let events = KillOnDrop(
        Command::new("ctr")
            .arg("--address")
            .arg(containerd.socket())
            .args(["events"])
            .stdout(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    events
}

/// The `/tasks/exit` line for container `id` in the events `log`, waiting up to 20 s for it.
fn wait_for_exit_event(log: &std::path::Path, id: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("/tasks/exit") && l.contains(id))
        {
            return line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit event for {id}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn in_a_network_namespace_the_service_answers_there_and_not_on_the_host() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let netns = NetNs::create("wasmhttp-test-ns", "10.213.77", "whtest");
    let ns_path = netns.path();
    let port = free_port();
    let port_env = format!("PORT={port}");
    let network = format!("network:{ns_path}");
    let output = ctr_run(
        &containerd,
        "-d",
        &["--with-ns", &network, "--env", &port_env, &image, "nsd1"],
    );
    assert!(
        output.status.success(),
        "ctr run -d --with-ns failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        wait_for_200(format!("{}.2:{port}", netns.prefix).parse().unwrap()),
        "Hello from wasmhttp!\n"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "not listening on the host"
    );
}

#[test]
fn the_start_action_answers_in_the_dialect_containerd_speaks() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let port = free_port();
    run_service(&containerd, &image, "dialect", port, &[]);
    wait_for_200(([127, 0, 0, 1], port).into());
    // containerd records how it reached the shim; 2.x's bootstrap protocol got a BootstrapResult asking for
    // the task API v3, older versions the bare address (task API v2).
    let bootstrap = containerd
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join("dialect/bootstrap.json");
    let recorded = std::fs::read_to_string(&bootstrap).unwrap_or_default();
    if major_version() >= 2 {
        assert!(
            recorded.contains("\"version\":3") && recorded.contains("\"protocol\":\"ttrpc\""),
            "{}: {recorded:?}",
            bootstrap.display()
        );
    } else {
        assert!(!recorded.contains("\"version\":3"), "{recorded}");
    }
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/").status, 200);
}

#[path = "containerd/file_mounts.rs"]
mod file_mounts;
#[path = "containerd/stdin.rs"]
mod stdin;
