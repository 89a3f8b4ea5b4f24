//! The environment `tests/cri.rs` gives containerd's CRI plugin: its config section, a CNI bridge and /24 of
//! the test's own, a local sandbox image name, and a cleanup that removes the bridge and pod namespaces.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::path::Path;
use std::process::Command;
use tonic::transport::Channel;

/// The test's bridge.
pub const BRIDGE: &str = "whcri0";
/// The pods' subnet on [`BRIDGE`]; nothing else uses it.
pub const SUBNET: &str = "10.213.88.0/24";
/// The sandbox image CRI starts pods with: the tests tag a wasm image under this name (no pause binary).
pub const SANDBOX_IMAGE: &str = "docker.io/wasmhttp-test/sandbox:latest";

/// The CRI section: our runtime as handler `wasmhttp`, a local sandbox image, CNI config of the test's own
/// (a bridge, and host ports through the portmap plugin), and plain-HTTP pulls from the test's registry at
/// `registry` through a `hosts.toml`.
pub fn cri_config(dir: &Path, registry: &str) -> Option<String> {
    let d = dir.display();
    pull_through(dir, registry, &format!("http://{registry}"), registry);
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    std::fs::write(
        cni.join("10-whcri.conflist"),
        format!(
            r#"{{"cniVersion": "0.4.0", "name": "whcri", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}",
  "isGateway": true, "ipMasq": false,
  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]], "dataDir": "{d}/cni-ipam"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}"#
        ),
    )
    .unwrap();
    Some(format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmhttp]
    runtime_type = "io.containerd.wasmhttp.v1"
    pod_annotations = ["wasmhttp.io/*"]
    container_annotations = ["wasmhttp.io/*"]
{}"#,
        if crate::containerd::major_version() >= 2 {
            SANDBOXED_RUNTIME
        } else {
            ""
        }
    ))
}

/// On containerd 2.x, the handler [`SANDBOXED`]: our runtime through the Sandbox API (`sandbox_mode`, which
/// 2.x reads from a version 2 config as `sandboxer`). containerd 2.3 still makes sure the sandbox image is
/// present for such a pod, though nothing runs it (2.4 adds `disable_pause_image_pull`).
const SANDBOXED_RUNTIME: &str = r#"  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmhttp-sandboxed]
    runtime_type = "io.containerd.wasmhttp.v1"
    sandbox_mode = "shim"
    pod_annotations = ["wasmhttp.io/*"]
    container_annotations = ["wasmhttp.io/*"]
"#;

/// The runtime handler whose pods are made by our shim's Sandbox service (containerd 2.x).
pub const SANDBOXED: &str = "wasmhttp-sandboxed";

/// Writes containerd's `hosts.toml` for images named `host/…` (under `certs.d` in `dir`): `server` is that
/// host's own address, and pulls go over plain HTTP to the test's `registry` instead.
pub fn pull_through(dir: &Path, host: &str, server: &str, registry: &str) {
    let hosts = dir.join("certs.d").join(host);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"{server}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
}

/// Removes the test's bridge, and any network namespace that appeared during the test, however the test
/// ends (on success CRI has already removed the pod's namespace).
pub struct PodNetworkCleanup {
    /// Namespaces that existed before the test started; they are left alone.
    pub before: Vec<String>,
}

/// The named network namespaces (`ip netns`) that exist now.
pub fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for PodNetworkCleanup {
    fn drop(&mut self) {
        for name in netns_names() {
            if name.starts_with("cni-") && !self.before.contains(&name) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

/// Imports the hello example into CRI's namespace and tags it [`SANDBOX_IMAGE`]: the pods' sandbox image is
/// a wasm image, not a pause binary.
pub fn tag_sandbox_image(containerd: &crate::containerd::Containerd) {
    let imported = crate::containerd::import_example_in(containerd, "k8s.io", "hello");
    let tagged = containerd.ctr_in("k8s.io", &["image", "tag", &imported, SANDBOX_IMAGE]);
    assert!(
        tagged.status.success(),
        "ctr image tag {SANDBOX_IMAGE}: {}",
        String::from_utf8_lossy(&tagged.stderr)
    );
}

/// A container config as the kubelet sends it: the image, `PORT`, a log path and Linux resources.
pub fn container_config(
    name: &str,
    image: &str,
    port: u16,
    resources: LinuxContainerResources,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        envs: vec![KeyValue {
            key: "PORT".into(),
            value: port.to_string(),
        }],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(resources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CreateContainer then StartContainer in `pod`; returns the container id.
pub async fn create_and_start(
    runtime: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    runtime
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// The container's state as ContainerStatus reports it.
pub async fn container_state(
    runtime: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> ContainerState {
    let status = runtime
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status");
    ContainerState::try_from(status.state).unwrap()
}

/// CRI `PullImage` of `reference`, as the kubelet does for an image it does not have; returns the image ref.
pub async fn pull(images: &mut ImageServiceClient<Channel>, reference: &str) -> String {
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {reference}: {e}"))
        .into_inner()
        .image_ref
}
