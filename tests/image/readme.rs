//! README's seed flow (the block after `<!-- seed-flow -->`), run verbatim against this suite's registry and
//! a private containerd.

use super::*;

/// Where the flow's `ctr run --log-uri` writes.
const LOG: &str = "/var/log/wasmhttp/logger.log";

#[test]
fn the_readme_seed_flow_runs_verbatim() {
    let readme = std::fs::read_to_string(wasmhttp_tests::workspace().join("README.md")).unwrap();
    let flow = readme
        .split("<!-- seed-flow -->\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a <!-- seed-flow --> sh block");
    let commands: Vec<&str> = flow.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(commands.len() <= 6, "six commands or fewer: {commands:?}");

    let registry = Registry::start();
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        wasmhttp_tests::workspace().join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    let path = wasmhttp_tests::path_with(binary("wasmhttp").parent().unwrap());
    let port = free_port().to_string();
    // The flow logs where a node's shim may write by default; an earlier run's log must not answer for it.
    let _log = RemovedBeforeAndAfter::new(LOG);
    let mut transcript = String::new();
    for command in &commands {
        if command.starts_with("cat ") {
            // Serving does not wait for the log writer: the line is written just after the response.
            log_holding(Path::new(LOG), &["logger stdout: GET /hello"]);
        }
        let output = Command::new("bash")
            .args(["-euc", command])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("REGISTRY", &registry.host)
            .env("PORT", &port)
            .env("CONTAINERD_ADDRESS", containerd.socket())
            .env(
                "CONTAINERD_NAMESPACE",
                wasmhttp_tests::containerd::NAMESPACE,
            )
            .output()
            .unwrap();
        transcript.push_str(&String::from_utf8_lossy(&output.stdout));
        assert!(
            output.status.success(),
            "README command `{command}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if command.starts_with("ctr run") {
            wait_for_200(([127, 0, 0, 1], port.parse().unwrap()).into());
        }
    }
    assert!(transcript.contains("logged /hello"), "{transcript}");
    assert!(
        transcript.contains("logger stdout: GET /hello"),
        "{transcript}"
    );
    assert!(
        transcript.contains("67108864"),
        "metrics show the limit: {transcript}"
    );
}

/// A file removed now and when dropped (also when the test fails).
struct RemovedBeforeAndAfter(&'static str);

impl RemovedBeforeAndAfter {
    fn new(path: &'static str) -> Self {
        let _ = std::fs::remove_file(path);
        RemovedBeforeAndAfter(path)
    }
}

impl Drop for RemovedBeforeAndAfter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}
