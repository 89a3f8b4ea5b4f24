//! A hostile pod author against a real containerd: what a container names stays inside the container, and
//! what the node allows bounds what annotations can reach.

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::example;

#[path = "isolation/network.rs"]
mod network;

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

    // A wasm layer in the content store, which the broker reads under the cap `start` passed it.
    let artifact = "example.com/big-artifact:v1";
    let tar = dir.path().join("artifact.tar");
    wasmhttp_tests::build_image("hello", artifact, "artifact", &tar);
    containerd.ctr_ok(&["image", "import", "--no-unpack", tar.to_str().unwrap()]);
    std::fs::write(
        &node,
        "[engine]\nmax-component-size = \"1Ki\"\n[security]\nimage-annotation = \"any\"\n",
    )
    .unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let annotation = format!("wasmhttp.io/image={artifact}");
    let err = create_error(
        &containerd,
        &empty,
        "big-layer",
        "hello.wasm",
        &[
            "--runtime-config-path",
            node.to_str().unwrap(),
            "--annotation",
            &annotation,
        ],
    );
    assert!(
        err.contains(&format!("image {artifact}: its wasm layer sha256:"))
            && err.contains(&format!(
                "is {size} bytes, more than the node's [engine] max-component-size (1024 bytes)"
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
    containerd.wait_for_log("start failed");

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
    kill_now(&containerd, "draining");
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

#[test]
fn a_compile_cache_entry_copied_under_another_digest_is_recompiled_not_run() {
    let containerd = Containerd::start();
    let cache = containerd.dir.path().join("cache");
    let entries = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(&cache)
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
        found
    };
    let serve = |name: &str, id: &str| -> String {
        let image = import_example(&containerd, name);
        let port = free_port();
        run_service(&containerd, &image, id, port, &[]);
        let body = wait_for_200(([127, 0, 0, 1], port).into());
        kill_now(&containerd, id);
        containerd.ctr_ok(&["task", "delete", id]);
        containerd.ctr_ok(&["container", "rm", id]);
        body
    };
    assert_eq!(serve("hello", "hello1"), "Hello from wasmhttp!\n");
    let hello = entries();
    assert_eq!(hello.len(), 1, "{hello:?}");
    assert!(serve("echo", "echo1").starts_with("method: GET\n"));
    let echo: Vec<_> = entries().into_iter().filter(|p| *p != hello[0]).collect();
    assert_eq!(echo.len(), 1, "{echo:?}");
    let sum = |p: &std::path::Path| format!("{}.sum", p.display());
    // A tenant able to write the cache would plant hello's code (and its valid sum) under echo's name.
    std::fs::copy(&hello[0], &echo[0]).unwrap();
    std::fs::copy(sum(&hello[0]), sum(&echo[0])).unwrap();
    assert!(
        serve("echo", "echo2").starts_with("method: GET\n"),
        "echo's own code runs"
    );
    containerd.wait_for_log(
        "discarding compile cache entry: it does not match its sum (corrupt, truncated or forged)",
    );
}

#[test]
fn a_containers_user_reads_and_writes_volumes_with_its_own_rights_as_under_runc() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::copy(example("probe"), rootfs.join("app.wasm")).unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode, gid) in [
        ("public", 0o644, 0),
        ("secret", 0o600, 0),
        ("team", 0o640, 2000),
    ] {
        let path = volume.join(name);
        std::fs::write(&path, name).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(&path, Some(0), Some(gid)).unwrap();
    }
    std::fs::create_dir(volume.join("mine")).unwrap();
    chown(volume.join("mine"), Some(1000), Some(1000)).unwrap();
    // ctr 1.6 has no --user: start from its default spec, as an operator's tooling would.
    let run = |id: &str, user: serde_json::Value| {
        let port = free_port();
        let mut spec: serde_json::Value =
            serde_json::from_str(&containerd.ctr_ok(&["oci", "spec"])).unwrap();
        spec["process"]["user"] = user;
        spec["root"] = serde_json::json!({"path": rootfs});
        spec["process"]["args"] = serde_json::json!(["/app.wasm"]);
        spec["process"]["env"] = serde_json::json!([format!("PORT={port}")]);
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "network");
        let mounts = spec["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "rw"]
        }));
        // Read-only file mounts (a subPath) are copies, readable as their sources are to the user.
        for name in ["public", "secret"] {
            mounts.push(serde_json::json!({
                "destination": format!("/etc/app/{name}"), "type": "bind",
                "source": volume.join(name), "options": ["rbind", "ro"]
            }));
        }
        let path = dir.path().join(format!("{id}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        let output = ctr_run(&containerd, "-d", &["--config", path.to_str().unwrap(), id]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let addr = ([127, 0, 0, 1], port).into();
        let body = wait_for_200_at(
            addr,
            "/?read=/data/public&read=/data/secret&read=/data/team&write=/data/mine/out&write=/data/root-owned\
             &read=/etc/app/public&read=/etc/app/secret",
        );
        kill_now(&containerd, id);
        body.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let verdicts =
        |lines: &[String]| -> Vec<bool> { lines.iter().map(|l| l.contains(" allowed")).collect() };

    let user = run(
        "user1000",
        serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]}),
    );
    assert_eq!(
        verdicts(&user),
        [true, false, true, true, false, true, false],
        "public, secret (root's), team (group 2000), mine/out (the user's directory), root-owned, then \
         public and secret as file mounts: {user:?}"
    );
    assert!(user[1].contains("denied"), "{user:?}");
    let written = std::fs::metadata(volume.join("mine/out")).unwrap();
    assert_eq!(
        (written.uid(), written.gid()),
        (1000, 1000),
        "owned by the user"
    );
    assert!(!volume.join("root-owned").exists());

    let without_group = run("nogroup", serde_json::json!({"uid": 1000, "gid": 1000}));
    assert!(!verdicts(&without_group)[2], "{without_group:?}");

    // Root in the container has root's rights, so the same probe can see everything.
    let root = run("root", serde_json::json!({"uid": 0, "gid": 0}));
    assert_eq!(verdicts(&root), [true; 7], "{root:?}");
    assert_eq!(
        std::fs::metadata(volume.join("root-owned")).unwrap().uid(),
        0
    );
}
