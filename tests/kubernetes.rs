//! The Kubernetes manifests we ship are valid for the API server, checked offline in strict mode.

use std::process::Command;
use wasmhttp_tests::workspace;

fn validate(files: &[&str]) -> (bool, String) {
    let output = Command::new("bash")
        .arg(workspace().join("scripts/validate-manifests.sh"))
        .args(files)
        .current_dir(workspace())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn shipped_manifests_pass_strict_validation() {
    let files = [
        "examples/kubernetes/runtimeclass.yaml",
        "examples/kubernetes/deployment.yaml",
        "examples/kubernetes/service.yaml",
        "examples/kubernetes/installer-daemonset.yaml",
    ];
    let (ok, said) = validate(&files);
    assert!(ok, "{said}");
    for file in files {
        let name = file.rsplit('/').next().unwrap();
        assert!(said.contains(&format!("{name} passed")), "{name}: {said}");
    }
    let deployment =
        std::fs::read_to_string(workspace().join("examples/kubernetes/deployment.yaml")).unwrap();
    assert!(deployment.contains("runtimeClassName: wasmhttp"));
    let class =
        std::fs::read_to_string(workspace().join("examples/kubernetes/runtimeclass.yaml")).unwrap();
    assert!(class.contains("handler: wasmhttp"));
}

/// The scrape job we document is a valid Prometheus configuration (`promtool`, from Debian's `prometheus`,
/// with file discovery standing in for the Kubernetes discovery Debian's build lacks), and finds pods by the
/// annotations the example Deployment carries.
#[test]
fn the_prometheus_scrape_config_is_valid_and_matches_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    let pods = dir.path().join("pods.json");
    std::fs::write(&pods, "[]").unwrap();
    std::fs::write(&config, wasmhttp_tests::prometheus::shipped_pod_job(&pods)).unwrap();
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian's prometheus) is not installed ({e}): run scripts/test.sh")
        });
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let deployment =
        std::fs::read_to_string(workspace().join("examples/kubernetes/deployment.yaml")).unwrap();
    for annotation in [
        "wasmhttp.io/metrics-port: \"9464\"",
        "prometheus.io/scrape: \"true\"",
        "prometheus.io/port: \"9464\"",
    ] {
        assert!(deployment.contains(annotation), "{annotation}");
    }
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: x\nhandler: wasmhttp\nhandlr: typo\n",
    )
    .unwrap();
    let (ok, said) = validate(&[bad.to_str().unwrap()]);
    assert!(
        !ok,
        "strict validation must reject an unknown field: {said}"
    );
}
