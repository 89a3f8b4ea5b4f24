//! Kubernetes' path, without a kubelet: the test drives containerd's CRI exactly as the kubelet does, with
//! `runtime_handler = "wasmhttp"`, real CNI pod networking on a bridge of its own, and a sandbox image that
//! has no pause binary at all.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::cri::*;
use wasmhttp_tests::get;
use wasmhttp_tests::load::{load, shim_cpu_rate};
use wasmhttp_tests::registry::Registry;

/// An `oci-wasm` image (an OCI config and a wasm layer, no filesystem layer) pulled through CRI runs as a
/// container of the pod with no annotation: containerd 1.7.7+ unpacks it to an empty rootfs, and the shim
/// reads the wasm from the container's image in the content store.
async fn oci_wasm_image_runs_in_the_pod(
    containerd: &Containerd,
    registry: &Registry,
    images: &mut ImageServiceClient<Channel>,
    runtime: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox: &PodSandboxConfig,
    ip: &str,
) {
    let tar = containerd.dir.path().join("hello-oci-wasm.tar");
    wasmhttp_tests::build_image("hello", "wasmhttp/hello:oci-wasm", "oci-wasm", &tar);
    let pushed = registry.push_oci_archive(&tar, "wasmhttp/hello:oci-wasm");
    pull(images, &pushed).await;
    let limits = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    create_and_start(
        runtime,
        pod,
        sandbox,
        container_config("oci-wasm", &pushed, 8086, limits),
    )
    .await;
    let addr: SocketAddr = format!("{ip}:8086").parse().unwrap();
    assert_eq!(wait_for_200_at(addr, "/"), "Hello from wasmhttp!\n");
}

/// A ConfigMap key mounted with `subPath`, as the kubelet passes it (a read-only bind of one file): the guest
/// reads it where it was mounted, and nothing else of the directory it came from.
async fn a_subpath_file_reaches_the_guest(
    containerd: &Containerd,
    runtime: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox: &PodSandboxConfig,
    ip: &str,
) {
    // The kubelet keeps volumes in /var/lib/kubelet, which the node configuration lets the shim reach by
    // default; this test's containerd state directory is reachable too, and is its own.
    let volume = containerd.dir.path().join("state/configmap-volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("app.conf"), "mode=pod").unwrap();
    std::fs::write(volume.join("other-key"), "not mounted").unwrap();
    let mut config = container_config(
        "probe",
        "docker.io/wasmhttp-test/probe:latest",
        8087,
        LinuxContainerResources::default(),
    );
    config.mounts = vec![Mount {
        container_path: "/etc/app/app.conf".into(),
        host_path: volume.join("app.conf").display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    create_and_start(runtime, pod, sandbox, config).await;
    let addr: SocketAddr = format!("{ip}:8087").parse().unwrap();
    let body = wait_for_200_at(addr, "/?read=/etc/app/app.conf&read=/etc/app/other-key");
    let lines: Vec<&str> = body.lines().collect();
    assert!(
        lines[0] == "read allowed: mode=pod" && lines[1].starts_with("read denied"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_through_cri() {
    let cleanup = PodNetworkCleanup {
        before: netns_names(),
    };
    let registry = Registry::start();
    let containerd = Containerd::start_with(|dir| cri_config(dir, &registry.host));
    tag_sandbox_image(&containerd);
    for name in [
        "logger",
        "mem-hog",
        "cpu-burn",
        "hello-cli",
        "counter-p3",
        "probe",
    ] {
        import_example_in(&containerd, "k8s.io", name);
    }
    let channel = containerd_client::connect(containerd.socket())
        .await
        .unwrap();
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    let listed = images
        .list_images(ListImagesRequest::default())
        .await
        .unwrap_or_else(|e| panic!("CRI ListImages: {e}\n{}", containerd.log()))
        .into_inner();
    let tags: Vec<&String> = listed.images.iter().flat_map(|i| &i.repo_tags).collect();
    for wanted in [
        "docker.io/wasmhttp-test/hello:latest",
        "docker.io/wasmhttp-test/logger:latest",
        SANDBOX_IMAGE,
    ] {
        assert!(
            tags.iter().any(|t| *t == wanted),
            "CRI lists {wanted}: {tags:?}"
        );
    }

    // PullImage from a registry, as the kubelet does for an image it does not have.
    let pushed = registry.push_oci_archive(
        &containerd.dir.path().join("hello.tar"),
        "wasmhttp/hello:pulled",
    );
    let pulled = pull(&mut images, &pushed).await;
    assert!(pulled.starts_with("sha256:"), "{pulled}");

    let log_dir = containerd.dir.path().join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "hello-pod".into(),
            uid: "wasmhttp-test-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "hello-pod".into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: "wasmhttp".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log()))
        .into_inner()
        .pod_sandbox_id;
    let status = runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let ip = status.network.unwrap().ip;
    assert!(ip.starts_with("10.213.88."), "pod IP {ip}");
    assert_eq!(
        containerd.shim_pids().len(),
        1,
        "the sandbox runs in our shim"
    );

    let limits = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let hello = create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config("hello", &pushed, 8080, limits.clone()),
    )
    .await;
    let logger = create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config(
            "logger",
            "docker.io/wasmhttp-test/logger:latest",
            8081,
            limits.clone(),
        ),
    )
    .await;
    // A WASI 0.3 service in the same pod and shim, under the same limits.
    let counter = create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config(
            "counter",
            "docker.io/wasmhttp-test/counter-p3:latest",
            8085,
            limits,
        ),
    )
    .await;
    assert_eq!(
        container_state(&mut runtime, &hello).await,
        ContainerState::ContainerRunning
    );
    assert_eq!(
        containerd.shim_pids().len(),
        1,
        "one shim serves the whole pod"
    );

    // Both services answer on the pod IP, and not on the host's loopback (their listeners are in the pod).
    let hello_addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let logger_addr: SocketAddr = format!("{ip}:8081").parse().unwrap();
    assert_eq!(
        try_wait_for_200_at(hello_addr, "/")
            .unwrap_or_else(|e| panic!("{e}\ncontainerd's log:\n{}", containerd.log_tail(100))),
        "Hello from wasmhttp!\n"
    );
    wait_for_200_at(logger_addr, "/cri-log-check");
    assert!(std::net::TcpStream::connect(("127.0.0.1", 8080)).is_err());
    let counter_addr: SocketAddr = format!("{ip}:8085").parse().unwrap();
    assert!(wait_for_200_at(counter_addr, "/").starts_with("count: "));
    let sleepers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(counter_addr, "/sleep/300").status))
        .collect();
    assert!(sleepers.into_iter().all(|s| s.join().unwrap() == 200));
    let over = get(counter_addr, "/alloc/80");
    assert_eq!(over.status, 500, "past the pod's 64 MiB: {over:?}");
    assert!(
        wait_for_200_at(counter_addr, "/").starts_with("count: "),
        "served again"
    );
    assert_eq!(
        container_state(&mut runtime, &counter).await,
        ContainerState::ContainerRunning
    );
    a_subpath_file_reaches_the_guest(&containerd, &mut runtime, &pod, &sandbox, &ip).await;
    if !is_1_6() {
        oci_wasm_image_runs_in_the_pod(
            &containerd,
            &registry,
            &mut images,
            &mut runtime,
            &pod,
            &sandbox,
            &ip,
        )
        .await;
    }

    // Stats, and a live resource update.
    let stats = runtime
        .container_stats(ContainerStatsRequest {
            container_id: hello.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let listed = runtime
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    for id in [&hello, &logger] {
        let entry = listed
            .iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| &a.id == id))
            .unwrap_or_else(|| panic!("{id} missing from ListContainerStats: {listed:?}"));
        assert!(
            entry
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .is_some_and(|b| b.value > 0)
        );
    }
    runtime
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: hello.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let limit = containerd.ctr_in("k8s.io", &["task", "metrics", &hello]);
    assert!(
        String::from_utf8_lossy(&limit.stdout).contains(&(32u64 << 20).to_string()),
        "{}",
        String::from_utf8_lossy(&limit.stdout)
    );

    // Probes: exec is refused with a message; kubectl logs reads the CRI log file.
    let exec = runtime
        .exec_sync(ExecSyncRequest {
            container_id: hello.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .expect_err("exec must be refused");
    assert!(exec.message().contains("exec"), "{exec}");
    let log_file = log_dir.join("logger.log");
    let log = log_holding(&log_file, &[" stderr F "]);
    let line = log
        .lines()
        .find(|l| l.contains(" stdout F "))
        .unwrap_or_else(|| panic!("{log}"));
    let timestamp = line.split(' ').next().unwrap();
    assert!(
        timestamp.contains('T') && timestamp.ends_with('Z'),
        "RFC 3339 time: {line}"
    );
    assert!(log.contains("/cri-log-check"), "{log}");

    // The pod's limits are enforced: mem-hog under 64 MiB, and a graceful stop of cpu-burn lets the
    // request in flight finish.
    let limited = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config(
            "hog",
            "docker.io/wasmhttp-test/mem-hog:latest",
            8082,
            limited,
        ),
    )
    .await;
    let hog_addr: SocketAddr = format!("{ip}:8082").parse().unwrap();
    wait_for_200_at(hog_addr, "/?mib=32");
    let reply = get(hog_addr, "/?mib=100");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "memory limit exceeded\n")
    );
    assert_eq!(get(hog_addr, "/?mib=8").status, 200, "still serving");

    // A CPU limit of 250m (quota 25000 / period 100000, as the kubelet writes it) holds under load:
    // the pod's shim, whose other containers are idle, uses 0.25 CPU ±10%, and no request fails.
    let throttled = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 25_000,
        ..Default::default()
    };
    create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config(
            "throttled",
            "docker.io/wasmhttp-test/cpu-burn:latest",
            8084,
            throttled,
        ),
    )
    .await;
    let throttled_addr: SocketAddr = format!("{ip}:8084").parse().unwrap();
    wait_for_200_at(throttled_addr, "/?ms=1");
    let shim = containerd.shim_pids()[0];
    let loaded =
        std::thread::spawn(move || load(throttled_addr, "/?ms=50", 4, Duration::from_secs(7)));
    // The first second spends the bucket's initial burst; the rate is measured after it.
    std::thread::sleep(Duration::from_secs(1));
    let ((), used) = shim_cpu_rate(shim, || std::thread::sleep(Duration::from_secs(5)));
    let statuses = loaded.join().unwrap();
    println!("FIGURE cri cpu limit 250m: the pod's shim used {used} under continuous load");
    assert!(statuses.iter().all(|s| *s == 200), "throttled, not failed");
    used.assert_near(0.25, "a 250m CPU limit through CRI");
    let burn = create_and_start(
        &mut runtime,
        &pod,
        &sandbox,
        container_config(
            "burn",
            "docker.io/wasmhttp-test/cpu-burn:latest",
            8083,
            LinuxContainerResources::default(),
        ),
    )
    .await;
    let burn_addr: SocketAddr = format!("{ip}:8083").parse().unwrap();
    wait_for_200_at(burn_addr, "/?ms=1");
    let in_flight = std::thread::spawn(move || get(burn_addr, "/?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    runtime
        .stop_container(StopContainerRequest {
            container_id: burn.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let finished = in_flight.join().unwrap();
    assert_eq!(
        finished.status, 200,
        "the in-flight request finished: {finished:?}"
    );
    assert_eq!(
        container_state(&mut runtime, &burn).await,
        ContainerState::ContainerExited
    );

    // A container of the pod that crashes (a command exiting 3) is reported exited with its code; the
    // pod's other containers keep serving from the same shim.
    let mut crashing = container_config(
        "crashing",
        "docker.io/wasmhttp-test/hello-cli:latest",
        0,
        LinuxContainerResources::default(),
    );
    crashing.args = vec!["3".into()];
    let crashed = create_and_start(&mut runtime, &pod, &sandbox, crashing).await;
    let started = Instant::now();
    let status = loop {
        let status = runtime
            .container_status(ContainerStatusRequest {
                container_id: crashed.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == ContainerState::ContainerExited as i32
            || started.elapsed() > Duration::from_secs(10)
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (status.state, status.exit_code),
        (ContainerState::ContainerExited as i32, 3),
        "{status:?}"
    );
    assert_eq!(get(hello_addr, "/").status, 200, "the pod keeps serving");
    assert_eq!(containerd.shim_pids().len(), 1, "the shim survived");

    // One container stopping does not stop the other; a restart in the same sandbox works.
    runtime
        .stop_container(StopContainerRequest {
            container_id: logger.clone(),
            timeout: 5,
        })
        .await
        .unwrap();
    assert_eq!(
        container_state(&mut runtime, &logger).await,
        ContainerState::ContainerExited
    );
    assert_eq!(
        get(hello_addr, "/").status,
        200,
        "the other container keeps serving"
    );
    runtime
        .remove_container(RemoveContainerRequest {
            container_id: logger,
        })
        .await
        .unwrap();
    let mut restarted_config = container_config(
        "logger",
        "docker.io/wasmhttp-test/logger:latest",
        8081,
        LinuxContainerResources::default(),
    );
    restarted_config.metadata.as_mut().unwrap().attempt = 1;
    create_and_start(&mut runtime, &pod, &sandbox, restarted_config).await;
    wait_for_200_at(logger_addr, "/");

    // Tear down as the kubelet does; nothing is left behind.
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    containerd.assert_shims_exit();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod) && !mounts.contains(containerd.dir.path().to_str().unwrap()),
        "mounts left behind: {mounts}"
    );
    assert_eq!(
        netns_names(),
        cleanup.before,
        "the pod's network namespace is gone"
    );
}
