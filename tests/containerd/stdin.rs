//! A command's stdin through `ctr run`, which attaches its own: what the client writes reaches the guest,
//! and the guest reaches the end of its input when the client closes it.

use super::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn a_command_reads_its_stdin_to_the_end_through_ctr_run() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "applets");
    // More than a fifo's buffer holds (64 KiB), so the client waits for the guest to read.
    let input: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let output = run_with_stdin(
        &containerd,
        &image,
        "cat1",
        input.as_bytes(),
        Duration::ZERO,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout == input.as_bytes(),
        "cat gave back {} of {} bytes",
        output.stdout.len(),
        input.len()
    );
    // A client that sends nothing and then closes its stdin: the guest reads the end of its input. (The
    // client holds it open for a second: one that closes before the task is created closes a fifo nobody
    // reads yet, and the end is lost, under runc as here.)
    let started = Instant::now();
    let output = run_with_stdin(&containerd, &image, "cat2", b"", Duration::from_secs(1));
    assert_eq!(
        (output.status.code(), output.stdout.len()),
        (Some(0), 0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `ctr run --rm IMAGE ID /app.wasm cat` with `input` on its stdin, which is closed `hold` later; within 60 s.
fn run_with_stdin(
    containerd: &Containerd,
    image: &str,
    id: &str,
    input: &[u8],
    hold: Duration,
) -> std::process::Output {
    let fifo_dir = containerd.fifo_dir();
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(containerd.socket())
        .args(["--namespace", NAMESPACE, "run", "--rm"])
        .args(["--runtime", RUNTIME, "--fifo-dir", &fifo_dir])
        .args([image, id, "/app.wasm", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let written = stdin.write_all(&input);
        std::thread::sleep(hold);
        written
    });
    // Its output is read while it runs (a full pipe would stop it), on a thread, so the wait is bounded.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let Ok(output) = finished.recv_timeout(Duration::from_secs(60)) else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("ctr run {id} did not end within 60 s");
    };
    let output = output.unwrap();
    let written = writer.join().unwrap();
    assert!(
        written.is_ok(),
        "the client could not write all of its input ({written:?}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
