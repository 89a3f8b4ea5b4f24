use super::*;
use oci_spec::runtime::LinuxResources;
use wasmhttp_runtime::{Capabilities, EngineConfig};

fn sandbox(events: Events) -> Arc<Container> {
    let workload = Workload {
        payload: Payload::Sandbox,
        layers: Default::default(),
        limits: Limits::default(),
        capabilities: Capabilities::default(),
        port: Ok(0),
        network: Network::Host,
        resolver_files: (None, None),
        metrics: Default::default(),
        rootfs: Vec::new(),
        file_copies: Vec::new(),
    };
    let runtime = Runtime::new(EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })
    .unwrap();
    let options = CreateOptions {
        runtime,
        stdin: None,
        stdout: GuestOutput::discard(),
        stderr: GuestOutput::discard(),
        events,
        tracing: None,
    };
    Arc::new(Container::create("pod-sandbox", workload, options, 1 << 20).unwrap())
}

#[tokio::test]
async fn the_pod_sandbox_runs_nothing_and_lives_until_killed() {
    let (events, mut published) = Events::captured();
    let sandbox = sandbox(events);
    assert_eq!(sandbox.status(), Status::Created);
    sandbox.start().unwrap();
    assert_eq!(sandbox.status(), Status::Running);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sandbox.wait())
            .await
            .is_err(),
        "it keeps running"
    );
    sandbox.set_paused(true).unwrap();
    sandbox.set_paused(false).unwrap();
    for ignored in [0, 28] {
        sandbox.kill(ignored, Duration::ZERO).unwrap();
    }
    assert!(
        matches!(sandbox.kill(19, Duration::ZERO), Err(ShimError::InvalidArgument(e)) if e.contains("ctr task pause")),
        "SIGSTOP is refused"
    );
    assert_eq!(
        sandbox.status(),
        Status::Running,
        "signals 0, 28 and 19 leave it running"
    );
    sandbox.kill(15, Duration::from_secs(1)).unwrap();
    assert_eq!(sandbox.wait().await.code, 143);
    assert_eq!(sandbox.status(), Status::Stopped);
    let Some(Event::Exit(exit)) = published.recv().await else {
        panic!("the exit event was published")
    };
    assert_eq!(
        (exit.container_id.as_str(), exit.exit_status),
        ("pod-sandbox", 143)
    );
    assert!(
        matches!(sandbox.kill(9, Duration::ZERO), Err(ShimError::NotFound(_))),
        "killing a stopped container"
    );
    assert!(
        matches!(sandbox.kill(0, Duration::ZERO), Err(ShimError::NotFound(_))),
        "signal 0 asks whether it is there"
    );
    assert!(
        matches!(sandbox.start(), Err(ShimError::FailedPrecondition(_))),
        "no restart"
    );
    let resources: LinuxResources = serde_json::from_str(r#"{"pids":{"limit":2}}"#).unwrap();
    assert!(
        matches!(sandbox.update(&resources), Err(ShimError::FailedPrecondition(e)) if e.ends_with("has stopped")),
        "no update of what has stopped"
    );
}

#[test]
fn an_exec_the_shim_cannot_run_is_refused_naming_what_is_wrong() {
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("bin")).unwrap();
    std::fs::write(rootfs.path().join("bin/notwasm"), "#!/bin/sh\n").unwrap();
    let base = ExecBase {
        runtime: Runtime::new(EngineConfig::default()).unwrap(),
        caps: Capabilities::default(),
        rootfs: vec![rootfs.path().to_path_buf()],
        max_bytes: 1 << 20,
        events: Events::none(),
    };
    let refusal = |spec: &str, terminal: bool| {
        let request = ExecRequest {
            spec: spec.as_bytes().to_vec(),
            terminal,
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
        };
        match base.prepare("c1", "e1", request) {
            Err(ShimError::InvalidArgument(why)) => why,
            Err(other) => panic!("{spec}: not InvalidArgument: {other}"),
            Ok(_) => panic!("{spec} was accepted"),
        }
    };
    let process = |args: &str| format!(r#"{{"cwd":"/","user":{{"uid":0,"gid":0}},"args":{args}}}"#);
    for (spec, terminal, why) in [
        (process(r#"["sh"]"#), true, "does not support terminals"),
        ("{".to_string(), false, "is not OCI process JSON"),
        (process("[]"), false, "process.args is empty"),
        (
            process(r#"["sh","a\u0000b"]"#),
            false,
            "process.args[1] holds a NUL byte",
        ),
        (
            process(r#"["sh"]"#),
            false,
            "process.args[0] sh does not exist in the container's rootfs (at its root or on its PATH)",
        ),
        (
            process(r#"["/bin/notwasm"]"#),
            false,
            "is not a WebAssembly",
        ),
    ] {
        let said = refusal(&spec, terminal);
        assert!(
            said.starts_with("exec e1 in container c1: ") && said.contains(why),
            "{spec}: {said}"
        );
    }
}
