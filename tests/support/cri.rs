//! The environment `tests/cri.rs` gives containerd's CRI plugin: its config section, a CNI bridge and /24 of
//! the test's own, a local sandbox image name, and a cleanup that removes the bridge and pod namespaces.

use std::path::Path;
use std::process::Command;

/// The test's bridge.
pub const BRIDGE: &str = "whcri0";
/// The pods' subnet on [`BRIDGE`]; nothing else uses it.
pub const SUBNET: &str = "10.213.88.0/24";
/// The sandbox image CRI starts pods with: the tests tag a wasm image under this name (no pause binary).
pub const SANDBOX_IMAGE: &str = "docker.io/wasmhttp-test/sandbox:latest";

/// The CRI section: our runtime as handler `wasmhttp`, a local sandbox image, CNI config of the test's own,
/// and plain-HTTP pulls from the test's registry at `registry` through a `hosts.toml`.
pub fn cri_config(dir: &Path, registry: &str) -> Option<String> {
    let d = dir.display();
    let hosts = dir.join("certs.d").join(registry);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    std::fs::write(
        cni.join("10-whcri.conflist"),
        format!(
            r#"{{"cniVersion": "0.4.0", "name": "whcri", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}",
  "isGateway": true, "ipMasq": false,
  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]], "dataDir": "{d}/cni-ipam"}}}}]}}"#
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
"#
    ))
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
