//! containerd 2.x's Sandbox API: with a CRI runtime whose `sandboxer` is `"shim"`, containerd asks our shim's
//! Sandbox service for the pod itself, so a pod has no sandbox container and no pause image. Pods start
//! through CRI that way, serve, report, and leave nothing behind; containerd's own sandbox controller API
//! reaches the shim's status and metrics.

use containerd_client::services::v1::sandbox::controller_client::ControllerClient;
use containerd_client::services::v1::sandbox::{ControllerMetricsRequest, ControllerStatusRequest};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::cri::*;
use wasmhttp_tests::crictl::{Crictl, pod_json, write_json};
use wasmhttp_tests::get;

/// containerd's sandbox controller API (`containerd.services.sandbox.v1.Controller`) for sandboxer "shim".
struct Controller {
    runtime: tokio::runtime::Runtime,
    client: ControllerClient<tonic::transport::Channel>,
}

impl Controller {
    fn connect(containerd: &Containerd) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = runtime
            .block_on(containerd_client::connect(containerd.socket()))
            .unwrap();
        Controller {
            runtime,
            client: ControllerClient::new(channel),
        }
    }

    fn call<R, T>(
        &mut self,
        message: R,
        call: impl AsyncFnOnce(
            &mut ControllerClient<tonic::transport::Channel>,
            tonic::Request<R>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> T {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", "k8s.io".parse().unwrap());
        self.runtime
            .block_on(call(&mut self.client, request))
            .unwrap_or_else(|e| panic!("sandbox controller: {e}"))
            .into_inner()
    }
}

#[test]
fn a_pod_made_by_the_sandbox_api_has_no_sandbox_container() {
    if major_version() < 2 {
        println!(
            "containerd {}: the Sandbox API needs containerd 2.x",
            version()
        );
        return;
    }
    let cleanup = PodNetworkCleanup {
        before: netns_names(),
    };
    let containerd = Containerd::start_with(|dir| cri_config(dir, "127.0.0.1:1"));
    // containerd 2.3's CRI checks the sandbox image is present even for a Sandbox API pod; nothing runs it.
    tag_sandbox_image(&containerd);
    let logger = import_example_in(&containerd, "k8s.io", "logger");
    let crictl = Crictl::new(&containerd);
    let dir = containerd.dir.path();
    let pod_config = pod_json(dir, "sandboxed");
    let pod = crictl
        .ok(&["runp", "--runtime", SANDBOXED, &pod_config])
        .trim()
        .to_string();

    // The pod is ready, has its IP, and is a shim with no container in it.
    let status = crictl.json(&["inspectp", &pod]);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    let ip = status["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.213.88."), "pod IP {ip}");
    let shims = containerd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod");
    assert_eq!(
        status["info"]["pid"].as_u64(),
        Some(shims[0] as u64),
        "{status}"
    );
    let containers = containerd.ctr_in("k8s.io", &["containers", "ls", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&containers.stdout).trim(),
        "",
        "no sandbox container"
    );
    assert!(
        !containerd.log().contains(&format!("containers/{pod}")),
        "no task was made for the pod"
    );
    let sandboxes =
        String::from_utf8_lossy(&containerd.ctr_in("k8s.io", &["sandboxes", "ls"]).stdout)
            .to_string();
    assert!(
        sandboxes.contains(&pod) && sandboxes.contains("io.containerd.wasmhttp.v1"),
        "{sandboxes}"
    );

    // A container of the pod runs in the pod's shim, on the pod's network.
    let container_config = write_json(
        dir,
        "logger.json",
        &serde_json::json!({
            "metadata": {"name": "logger"},
            "image": {"image": logger},
            "envs": [{"key": "PORT", "value": "8081"}],
            "log_path": "logger.log",
            "linux": {"resources": {"memory_limit_in_bytes": 64u64 << 20}}
        }),
    );
    let id = crictl
        .ok(&["create", &pod, &container_config, &pod_config])
        .trim()
        .to_string();
    crictl.ok(&["start", &id]);
    let addr: SocketAddr = format!("{ip}:8081").parse().unwrap();
    assert_eq!(wait_for_200_at(addr, "/sandboxed"), "logged /sandboxed\n");
    assert!(std::net::TcpStream::connect(("127.0.0.1", 8081)).is_err());
    assert_eq!(
        containerd.shim_pids(),
        shims,
        "the container runs in the pod's shim"
    );
    let ps = crictl.ok(&["ps", "--id", &id]);
    assert!(ps.contains("Running"), "{ps}");
    let logs = crictl.logs_holding(&id, "logger stdout: GET /sandboxed");
    assert!(logs.contains("logger stdout: GET /sandboxed"), "{logs}");
    let stats = crictl.json(&["stats", "--id", &id]);
    assert!(
        stats["stats"][0]["memory"]["workingSetBytes"]["value"]
            .as_str()
            .is_some_and(|v| v != "0"),
        "{stats}"
    );

    // exec reaches a container of such a pod as any other (tests/exec.rs).
    let applets = import_example_in(&containerd, "k8s.io", "applets");
    let shell_config = write_json(
        dir,
        "shell.json",
        &serde_json::json!({
            "metadata": {"name": "shell"},
            "image": {"image": applets},
            "command": ["/app.wasm", "top"],
            "log_path": "shell.log"
        }),
    );
    let shell = crictl
        .ok(&["create", &pod, &shell_config, &pod_config])
        .trim()
        .to_string();
    crictl.ok(&["start", &shell]);
    let echoed = crictl.ok(&[
        "exec",
        "--sync",
        &shell,
        "/app.wasm",
        "echo",
        "-n",
        "sandboxed",
    ]);
    assert_eq!(echoed.trim_end(), "sandboxed");

    // containerd's sandbox controller API answers from the shim. (It does not offer Platform; CRI calls the
    // shim's for every CreateContainer and stats call above, and reads Linux metrics only for "linux".)
    let mut controller = Controller::connect(&containerd);
    let controller_status = controller.call(
        ControllerStatusRequest {
            sandbox_id: pod.clone(),
            sandboxer: "shim".into(),
            verbose: false,
        },
        async |c, r| c.status(r).await,
    );
    assert_eq!(
        (controller_status.state.as_str(), controller_status.pid),
        ("SANDBOX_READY", shims[0] as u32)
    );
    let metrics = controller.call(
        ControllerMetricsRequest {
            sandbox_id: pod.clone(),
            sandboxer: "shim".into(),
        },
        async |c, r| c.metrics(r).await,
    );
    let metric = metrics.metrics.expect("pod metrics");
    assert_eq!(metric.id, pod);
    assert!(
        metric.data.is_some_and(|d| d.type_url.contains("Metrics")),
        "cgroup-shaped metrics"
    );

    // Stopping the pod stops what CRI left running; removing it ends the shim and frees everything.
    crictl.ok(&["stopp", &pod]);
    let stopped = crictl.json(&["inspectp", &pod]);
    assert_eq!(stopped["status"]["state"], "SANDBOX_NOTREADY", "{stopped}");
    let exited: Value = crictl.json(&["inspect", &id]);
    assert_eq!(exited["status"]["state"], "CONTAINER_EXITED", "{exited}");
    get_refused(addr);
    crictl.ok(&["rmp", &pod]);
    containerd.assert_shims_exit();
    assert_eq!(crictl.ok(&["pods", "-q"]).trim(), "", "no pod is left");
    let sandboxes = containerd.ctr_in("k8s.io", &["sandboxes", "ls"]);
    let sandboxes = String::from_utf8_lossy(&sandboxes.stdout);
    assert!(!sandboxes.contains(&pod), "{sandboxes}");
    assert_eq!(
        netns_names(),
        cleanup.before,
        "the pod's network namespace is gone"
    );
    let log = containerd.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") && l.contains(&pod[..12]))
        .collect();
    assert!(
        errors.is_empty(),
        "containerd logged errors about the pod: {errors:#?}"
    );
}

/// Waits (up to 5 s) until nothing answers at `addr`.
fn get_refused(addr: SocketAddr) {
    let started = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{addr} still answers: {:?}",
            get(addr, "/")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
