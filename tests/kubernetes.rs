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
