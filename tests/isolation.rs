//! A hostile pod author against a real containerd: what a container names stays inside the container, and
//! what the node allows bounds what annotations can reach.

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::example;

/// Bytes that would show in an error if the shim read the host's file (as a string and as the hex dump the
/// "not wasm" error prints).
const SECRET: &[u8] = b"barsecret-of-the-host";

/// Runs `args[0]` from `rootfs` (a plain directory, as `ctr run --rootfs` gives it) and returns Create's error.
fn create_error(
    containerd: &Containerd,
    rootfs: &std::path::Path,
    id: &str,
    entry: &str,
    extra: &[&str],
) -> String {
    let mut args = vec!["--net-host"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap(), id, entry]);
    let started = Instant::now();
    let output = ctr_run(containerd, "--rm", &args);
    let _ = containerd.ctr(&["container", "rm", id]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "Create of {entry} blocked for {:?}",
        started.elapsed()
    );
    assert!(!output.status.success(), "{entry} was accepted");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn paths_a_container_names_resolve_inside_its_root_and_only_regular_files_are_read() {
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    std::fs::copy(example("hello"), rootfs.join("app/hello.wasm")).unwrap();
    symlink(&secret, rootfs.join("absolute.wasm")).unwrap();
    let up = "../".repeat(12);
    symlink(
        format!("{up}{}", secret.display()),
        rootfs.join("app/relative.wasm"),
    )
    .unwrap();
    symlink(dir.path(), rootfs.join("hostdir")).unwrap();
    symlink("/proc/kmsg", rootfs.join("kmsg.wasm")).unwrap();
    symlink("/app/hello.wasm", rootfs.join("inside.wasm")).unwrap();
    nix::unistd::mkfifo(&rootfs.join("fifo.wasm"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let hex: String = SECRET[..4].iter().map(|b| format!("{b:02x} ")).collect();
    for (entry, expected) in [
        (
            "/absolute.wasm",
            "process.args[0] /absolute.wasm does not exist in the container's rootfs",
        ),
        (
            "/app/relative.wasm",
            "process.args[0] /app/relative.wasm does not exist",
        ),
        (
            "/hostdir/host-secret",
            "process.args[0] /hostdir/host-secret does not exist",
        ),
        ("/../../host-secret", "does not exist"),
        ("/kmsg.wasm", "process.args[0] /kmsg.wasm does not exist"),
        (
            "/fifo.wasm",
            "process.args[0] /fifo.wasm is a FIFO, not a regular file",
        ),
    ] {
        let err = create_error(&containerd, &rootfs, "escape", entry, &[]);
        assert!(err.contains(expected), "{entry}: {err}");
        assert!(
            !err.contains("barsecret") && !err.contains(hex.trim()) && !err.contains("21 bytes"),
            "{entry}: the host file leaked into the error: {err}"
        );
    }

    // A symlink that stays inside the root is followed: the service runs.
    let port = free_port();
    let env = format!("PORT={port}");
    let output = ctr_run(
        &containerd,
        "-d",
        &[
            "--net-host",
            "--env",
            &env,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "inside",
            "/inside.wasm",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        wait_for_200(([127, 0, 0, 1], port).into()),
        "Hello from wasmhttp!\n"
    );
    containerd.ctr_ok(&["task", "kill", "inside"]);
    wait_for_status(&containerd, "inside", "STOPPED");
    containerd.ctr_ok(&["task", "rm", "inside"]);
    containerd.ctr_ok(&["container", "rm", "inside"]);
}

#[test]
fn the_node_caps_the_size_of_a_component_a_container_names() {
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::copy(example("hello"), rootfs.join("app.wasm")).unwrap();
    let size = std::fs::metadata(rootfs.join("app.wasm")).unwrap().len();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[engine]\nmax-component-size = \"1Ki\"\n").unwrap();
    let err = create_error(
        &containerd,
        &rootfs,
        "big",
        "/app.wasm",
        &["--runtime-config-path", node.to_str().unwrap()],
    );
    assert!(
        err.contains(&format!(
            "process.args[0] /app.wasm is {size} bytes, more than the node's [engine] max-component-size (1024 bytes)"
        )),
        "{err}"
    );
}

#[test]
fn the_image_annotation_names_only_the_containers_own_image_unless_the_node_allows_more() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let output = ctr_run(
        &containerd,
        "--rm",
        &[
            "--net-host",
            "--annotation",
            "wasmhttp.io/image=docker.io/someone-else/private:v1",
            &image,
            "borrow",
            "/app.wasm",
        ],
    );
    let _ = containerd.ctr(&["container", "rm", "borrow"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains(&format!(
            "annotation wasmhttp.io/image=docker.io/someone-else/private:v1 names an image other than the \
             container's own ({image})"
        )) && err.contains("image-annotation = \"any\""),
        "{err}"
    );
}

#[test]
fn a_failed_start_exits_and_sigkill_cuts_a_drain_short() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "counter-p3");

    // Start fails on a port in use; the task must still exit, so Wait returns and Delete reports it.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let env = format!("PORT={}", taken.local_addr().unwrap().port());
    let output = ctr_run(
        &containerd,
        "-d",
        &["--net-host", "--env", &env, &image, "taken"],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("in use"), "{err}");
    assert_eq!(task_status(&containerd, "taken"), "STOPPED");
    assert_eq!(
        deleted_exit(&containerd, "taken"),
        "exit code 128",
        "Delete reports the failed start"
    );
    containerd.ctr_ok(&["container", "rm", "taken"]);
    assert!(
        containerd.log().contains("start failed"),
        "{}",
        containerd.log()
    );

    // SIGTERM drains for up to 60 s; SIGKILL during the drain stops the service at once with 137.
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[defaults]\ndrain-timeout = \"60s\"\n").unwrap();
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "draining",
        port,
        &["--runtime-config-path", node.to_str().unwrap()],
    );
    let addr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);
    let sleeper = std::thread::spawn(move || wasmhttp_tests::get(addr, "/sleep/30000").status);
    std::thread::sleep(Duration::from_millis(500));
    containerd.ctr_ok(&["task", "kill", "draining"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        task_status(&containerd, "draining"),
        "RUNNING",
        "the drain waits for the sleeper"
    );
    let killed = Instant::now();
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "draining"]);
    wait_for_status(&containerd, "draining", "STOPPED");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "SIGKILL took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        sleeper.join().unwrap(),
        503,
        "the cancelled request is answered"
    );
    assert_eq!(deleted_exit(&containerd, "draining"), "exit code 137");
    containerd.ctr_ok(&["container", "rm", "draining"]);
}

/// `ctr task delete ID`, and the exit it reports (ctr only warns about a non-zero one).
fn deleted_exit(containerd: &Containerd, id: &str) -> String {
    let output = containerd.ctr(&["task", "delete", id]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    match said.split("non-zero exit code ").nth(1) {
        Some(rest) => format!(
            "exit code {}",
            rest.split('"').next().unwrap_or(rest).trim()
        ),
        None => "exit code 0".into(),
    }
}
