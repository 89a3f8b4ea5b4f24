//! Exec into a running wasm container with `ctr task exec`, as an operator debugs one and as CRI runs exec
//! probes: a WASI command from the container's rootfs, with its own args, stdio and exit code, beside the
//! service it does not disturb.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::{KillOnDrop, example, get, workspace};

/// An image with the hello service at `/app.wasm` (its entrypoint) and the applets command at `/bin/sh`,
/// `/bin/echo`, `/bin/sleep`, `/bin/cat` and `/bin/dd`, imported; returns its reference.
fn import_service_with_applets(containerd: &Containerd) -> String {
    let reference = "docker.io/wasmhttp-test/exec:latest";
    let tar = containerd.dir.path().join("exec.tar");
    let (hello, applets) = (example("hello"), example("applets"));
    let mut command = Command::new("python3");
    command
        .arg(workspace().join("bench/oci_image.py"))
        .arg(&tar)
        .arg(reference)
        .args(["--entrypoint", "/app.wasm"])
        .arg(format!("{}=/app.wasm", hello.display()));
    for applet in ["sh", "echo", "sleep", "cat", "dd"] {
        command.arg(format!("{}=/bin/{applet}", applets.display()));
    }
    wasmhttp_tests::succeed(&mut command);
    containerd.ctr_ok(&["image", "import", tar.to_str().unwrap()]);
    reference.to_string()
}

/// `ctr task exec` of `args` in container `id` as exec `exec_id`, with its stdio fifos in the test's
/// directory.
fn exec_command(containerd: &Containerd, id: &str, exec_id: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ctr");
    command
        .args(["--address", containerd.socket().to_str().unwrap()])
        .args(["--namespace", NAMESPACE, "task", "exec", "--fifo-dir"])
        .arg(containerd.fifo_dir())
        .args(["--exec-id", exec_id, id])
        .args(args);
    command
}

fn exec(containerd: &Containerd, id: &str, exec_id: &str, args: &[&str]) -> Output {
    exec_command(containerd, id, exec_id, args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `ctr task exec --detach`: starts exec `exec_id` of `args` in container `id` and returns.
fn detach(containerd: &Containerd, id: &str, exec_id: &str, args: &[&str]) {
    let fifos = containerd.fifo_dir();
    let flags = [
        "task",
        "exec",
        "--detach",
        "--fifo-dir",
        &fifos,
        "--exec-id",
        exec_id,
        id,
    ];
    containerd.ctr_ok(&[&flags[..], args].concat());
}

/// Starts `sh -c "echo ready; sleep 600"` as exec `exec_id` and returns once it runs.
fn start_long_exec(containerd: &Containerd, id: &str, exec_id: &str) -> KillOnDrop {
    let mut child = exec_command(
        containerd,
        id,
        exec_id,
        &["sh", "-c", "echo ready; sleep 600"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "the long exec started");
    KillOnDrop(child)
}

/// The exit code of a `ctr task exec` that ends within 20 s.
fn exit_code(mut exec: KillOnDrop) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = exec.0.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the exec never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctr_task_exec_runs_a_command_from_the_rootfs_beside_the_service() {
    let containerd = Containerd::start();
    let image = import_service_with_applets(&containerd);
    let port = free_port();
    run_service(&containerd, &image, "svc", port, &[]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);

    // A bare name is looked up on the container's PATH; its output and exit code are the exec's.
    let echoed = exec(&containerd, "svc", "echo", &["echo", "-n", "hello"]);
    assert_eq!(
        (
            echoed.status.code(),
            String::from_utf8_lossy(&echoed.stdout)
        ),
        (Some(0), "hello".into()),
        "{}",
        String::from_utf8_lossy(&echoed.stderr)
    );
    let exited = exec(&containerd, "svc", "exit", &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(exited.status.code(), Some(3));

    // Its stdin is the client's.
    let mut cat = exec_command(&containerd, "svc", "cat", &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"typed in\n").unwrap();
    let catted = cat.wait_with_output().unwrap();
    assert_eq!(
        (
            catted.status.code(),
            String::from_utf8_lossy(&catted.stdout)
        ),
        (Some(0), "typed in\n".into())
    );

    // What it cannot run is refused with the reason.
    for (args, why) in [
        (
            &["/bin/missing"][..],
            "process.args[0] /bin/missing does not exist in the container's rootfs",
        ),
        (
            &["ls"][..],
            "process.args[0] ls does not exist in the container's rootfs (at its root or on its PATH)",
        ),
        (
            &["/app.wasm"][..],
            "/app.wasm is a wasi:http service, not a command",
        ),
    ] {
        let refused = exec(&containerd, "svc", "refused", args);
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && said.contains(why),
            "{args:?}: {said}"
        );
    }

    // An exec is ended by a signal as a process without handlers is, and the service serves on.
    let long = start_long_exec(&containerd, "svc", "long");
    assert_eq!(get(addr, "/").status, 200, "serving while an exec runs");
    containerd.ctr_ok(&["task", "kill", "--exec-id", "long", "svc"]);
    assert_eq!(exit_code(long), Some(143), "SIGTERM gives 143");
    assert_eq!(get(addr, "/").status, 200, "serving after the exec");
    assert_eq!(task_status(&containerd, "svc"), "RUNNING");

    // A container holds at most 16 execs at once; detached ones count until they are deleted.
    for i in 0..15 {
        detach(
            &containerd,
            "svc",
            &format!("detached{i}"),
            &["sleep", "600"],
        );
    }
    let orphan = start_long_exec(&containerd, "svc", "orphan");
    let one_more = exec(&containerd, "svc", "one-more", &["echo", "x"]);
    let said = String::from_utf8_lossy(&one_more.stderr);
    assert!(
        !one_more.status.success() && said.contains("container svc holds 16 execs already"),
        "{said}"
    );

    // An exec does not outlive its container.
    kill_now(&containerd, "svc");
    assert_eq!(exit_code(orphan), Some(137), "ended with its container");
    let late = exec(&containerd, "svc", "late", &["echo", "late"]);
    let said = String::from_utf8_lossy(&late.stderr);
    assert!(
        !late.status.success() && said.contains("container svc is not running"),
        "{said}"
    );
    containerd.ctr_ok(&["task", "delete", "svc"]);
    containerd.ctr_ok(&["container", "rm", "svc"]);

    // A container running a command takes execs too.
    let run = ctr_run(&containerd, "-d", &[&image, "cmd", "/bin/sleep", "600"]);
    assert!(run.status.success(), "{run:?}");
    let echoed = exec(&containerd, "cmd", "echo", &["echo", "beside a command"]);
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout),
        "beside a command\n"
    );
    kill_now(&containerd, "cmd");
    containerd.ctr_ok(&["task", "delete", "cmd"]);
    containerd.ctr_ok(&["container", "rm", "cmd"]);
}

#[test]
fn an_exec_takes_from_its_containers_cpu_quota_and_memory_limit() {
    let containerd = Containerd::start();
    let image = import_service_with_applets(&containerd);
    let port = free_port();
    let memory = (64u64 << 20).to_string();
    let limits = ["--cpus", "0.25", "--memory-limit", &memory];
    run_service(&containerd, &image, "svc", port, &limits);
    wait_for_200(([127, 0, 0, 1], port).into());
    let detached = |exec_id: &str, args: &[&str]| detach(&containerd, "svc", exec_id, args);

    // Memory: an exec holding 40 MiB of the container's 64 leaves no room for another 40 MiB, which would
    // fit on its own; once it is gone, there is.
    detached("hold", &["dd", "if=/dev/zero", "of=/dev/null", "bs=40M"]);
    let started = Instant::now();
    while metric_in(
        &containerd.ctr_ok(&["task", "metrics", "svc"]),
        "memory.usage_in_bytes",
    ) < 40 << 20
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the exec never held its 40 MiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let once = ["dd", "if=/dev/zero", "of=/dev/null", "bs=40M", "count=1"];
    let beside = exec(&containerd, "svc", "beside", &once);
    let said = String::from_utf8_lossy(&beside.stderr);
    assert!(
        beside.status.code() == Some(134) && said.contains("over capacity"),
        "{:?} {said}",
        beside.status
    );
    containerd.ctr_ok(&["task", "kill", "--exec-id", "hold", "svc"]);
    let alone = exec(&containerd, "svc", "alone", &once);
    assert_eq!(
        alone.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );

    // CPU: two execs that would each use a whole CPU share the container's quarter of one.
    for exec_id in ["burn1", "burn2"] {
        detached(exec_id, &["dd", "if=/dev/zero", "of=/dev/null", "bs=1M"]);
    }
    let shim = containerd.shim_pids()[0];
    // The first second spends the quota's initial burst; the rate is measured after it.
    std::thread::sleep(Duration::from_secs(1));
    let ((), used) =
        wasmhttp_tests::load::shim_cpu_rate(shim, || std::thread::sleep(Duration::from_secs(3)));
    println!("FIGURE two CPU-bound execs under --cpus 0.25: the shim used {used}");
    used.assert_near(0.25, "two execs in a container of a quarter CPU");
    kill_now(&containerd, "svc");
    containerd.ctr_ok(&["task", "delete", "svc"]);
    containerd.ctr_ok(&["container", "rm", "svc"]);
}
