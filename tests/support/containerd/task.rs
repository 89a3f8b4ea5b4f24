//! Tasks driven through `ctr` and containerd's API: importing an example, running it as a service,
//! watching its status, updating its resources and reading its metrics.

use super::{Containerd, NAMESPACE, RUNTIME};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds an image of an example with `wasmhttp image build` and imports it; returns its reference.
pub fn import_example(containerd: &Containerd, name: &str) -> String {
    import_example_in(containerd, NAMESPACE, name)
}

/// [`import_example`] into another containerd namespace (CRI's is `k8s.io`).
pub fn import_example_in(containerd: &Containerd, namespace: &str, name: &str) -> String {
    let reference = format!("docker.io/wasmhttp-test/{name}:latest");
    let tar = containerd.dir.path().join(format!("{name}.tar"));
    crate::build_image(name, &reference, "layer", &tar);
    let imported = containerd.ctr_in(namespace, &["image", "import", tar.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "ctr image import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    reference
}

/// `ctr run <mode> --runtime io.containerd.wasmhttp.v1 --fifo-dir <private> ARGS…`: the runtime and a fifo
/// directory inside the test's temp dir, so no fifo is left in /run.
pub fn ctr_run(containerd: &Containerd, mode: &str, args: &[&str]) -> std::process::Output {
    ctr_run_in(containerd, NAMESPACE, mode, args)
}

/// [`ctr_run`] in another containerd namespace.
pub fn ctr_run_in(
    containerd: &Containerd,
    namespace: &str,
    mode: &str,
    args: &[&str],
) -> std::process::Output {
    let fifo_dir = containerd.fifo_dir();
    let mut all = vec!["run", mode, "--runtime", RUNTIME, "--fifo-dir", &fifo_dir];
    all.extend_from_slice(args);
    containerd.ctr_in(namespace, &all)
}

/// `ctr run -d` of an HTTP service on the host network, on `port`.
pub fn run_service(containerd: &Containerd, image: &str, id: &str, port: u16, extra: &[&str]) {
    let port_env = format!("PORT={port}");
    let mut args = vec!["--net-host", "--env", &port_env];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, id]);
    let output = ctr_run(containerd, "-d", &args);
    assert!(
        output.status.success(),
        "ctr run -d {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `ctr run -d --net-host ARGS ID`, which Create must refuse: asserts that it failed, removes the container
/// it left, and returns what ctr said.
pub fn refused_run(containerd: &Containerd, args: &[&str], id: &str) -> String {
    let args = [&["--net-host"], args, &[id]].concat();
    let output = ctr_run(containerd, "-d", &args);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} was accepted: {said}");
    containerd.ctr_ok(&["container", "rm", id]);
    said
}

/// The task's status column in `ctr task ls` (`MISSING` when absent).
pub fn task_status(containerd: &Containerd, id: &str) -> String {
    let listing = containerd.ctr_ok(&["task", "ls"]);
    listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or("MISSING")
        .to_string()
}

/// Writes a node configuration (for `--runtime-config-path`) into `dir` that lists `dir` in `[security]
/// host-paths`, so the confined shim may write a log file there, and returns its path.
pub fn node_config_listing(dir: &Path) -> PathBuf {
    let node = dir.join("node.toml");
    std::fs::write(&node, format!("[security]\nhost-paths = [{dir:?}]\n")).unwrap();
    node
}

/// SIGKILLs the task `id` and waits until it is stopped.
pub fn kill_now(containerd: &Containerd, id: &str) {
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    wait_for_status(containerd, id, "STOPPED");
}

/// Waits until `ctr task ls` shows `status` for `id`.
pub fn wait_for_status(containerd: &Containerd, id: &str, status: &str) {
    let started = Instant::now();
    while task_status(containerd, id) != status {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id} never became {status}: {}",
            task_status(containerd, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `call` against containerd's API on a runtime of its own, with this suite's namespace set on each
/// request by [`namespaced`]; an error is the status's message.
fn with_api<F, T>(
    containerd: &Containerd,
    call: impl FnOnce(tonic::transport::Channel) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = containerd_client::connect(containerd.socket())
            .await
            .map_err(|e| format!("cannot connect to containerd: {e}"))?;
        call(channel)
            .await
            .map_err(|status| status.message().to_string())
    })
}

/// A request in this suite's containerd namespace.
fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", NAMESPACE.parse().unwrap());
    request
}

/// Calls containerd's Tasks `Update` API with OCI `LinuxResources` JSON, as CRI's
/// `UpdateContainerResources` and `nerdctl update` do (`ctr` 1.6 has no update command).
pub fn update_resources(
    containerd: &Containerd,
    id: &str,
    resources_json: &str,
) -> Result<(), String> {
    use containerd_client::services::v1::UpdateTaskRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    let request = namespaced(UpdateTaskRequest {
        container_id: id.to_string(),
        resources: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources_json.as_bytes().to_vec(),
        }),
        annotations: Default::default(),
    });
    with_api(containerd, |channel| async move {
        TasksClient::new(channel).update(request).await.map(|_| ())
    })
}

/// Creates the task of container `id` (made by `ctr container create`) through containerd's API, on its
/// snapshot and with no stdio, and leaves it created: `ctr` 1.6 cannot stop between Create and Start.
pub fn create_task(containerd: &Containerd, id: &str) -> Result<(), String> {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::snapshots::MountsRequest;
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::{CreateTaskRequest, GetContainerRequest};
    with_api(containerd, |channel| async move {
        let container = ContainersClient::new(channel.clone())
            .get(namespaced(GetContainerRequest { id: id.to_string() }))
            .await?
            .into_inner()
            .container
            .ok_or_else(|| tonic::Status::not_found(id.to_string()))?;
        let rootfs = SnapshotsClient::new(channel.clone())
            .mounts(namespaced(MountsRequest {
                snapshotter: container.snapshotter,
                key: container.snapshot_key,
            }))
            .await?
            .into_inner()
            .mounts;
        TasksClient::new(channel)
            .create(namespaced(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                ..Default::default()
            }))
            .await
            .map(|_| ())
    })
}

/// Starts a created task through containerd's API.
pub fn start_task(containerd: &Containerd, id: &str) -> Result<(), String> {
    use containerd_client::services::v1::StartRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    let request = namespaced(StartRequest {
        container_id: id.to_string(),
        ..Default::default()
    });
    with_api(containerd, |channel| async move {
        TasksClient::new(channel).start(request).await.map(|_| ())
    })
}

/// One numeric line of `ctr task metrics ID` (cgroup v1 names such as `cpuacct.usage`).
pub fn metric(containerd: &Containerd, id: &str, key: &str) -> u64 {
    metric_at(&containerd.socket(), id, key)
}

/// [`metric`] for a containerd known by its socket, so sampling threads can call it.
pub fn metric_at(socket: &Path, id: &str, key: &str) -> u64 {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", NAMESPACE, "task", "metrics", id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    metric_in(&String::from_utf8_lossy(&output.stdout), key)
}

/// The value of the line `key VALUE` in the output of `ctr task metrics`.
pub fn metric_in(metrics: &str, key: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {metrics}"))
}
