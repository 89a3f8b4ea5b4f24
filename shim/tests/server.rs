//! The shim server process on its own: what containerd sees when the server fails after it said it was up.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

#[test]
fn a_server_that_fails_after_starting_logs_why_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    // containerd makes the `log` fifo in the bundle directory and reads it; the shim writes its log there.
    nix::unistd::mkfifo(&dir.path().join("log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(dir.path().join("log"))
        .unwrap();
    let socket = dir.path().join("shim.sock");

    let mut server = Command::new(env!("CARGO_BIN_EXE_containerd-shim-wasmhttp-v1"))
        .args(["-namespace", "test", "-id", "c1", "-address"])
        .arg(dir.path().join("containerd.sock"))
        .arg("-socket")
        .arg(format!("unix://{}", socket.display()))
        .current_dir(dir.path())
        // Without it the server cannot publish events: a failure that comes after the socket listens.
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The `start` action waits for this to close, then hands containerd the socket.
    let mut said = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_eq!(said, "", "nothing but the close goes to the start action");
    let status = server.wait().unwrap();
    assert!(!status.success(), "the server must exit with an error");

    let mut logged = String::new();
    log.read_to_string(&mut logged).unwrap();
    assert!(
        logged.contains("shim server failed") && logged.contains("TTRPC_ADDRESS"),
        "the reason reaches containerd's log: {logged}"
    );
    assert!(
        !socket.exists(),
        "the socket of a failed server is not left behind"
    );
}

/// `-v` is what an operator types to see which shim containerd will run; `-info` is what containerd 2.x asks.
#[test]
fn version_and_info_answer_and_exit_zero() {
    let shim = env!("CARGO_BIN_EXE_containerd-shim-wasmhttp-v1");
    let version = Command::new(shim).arg("-v").output().unwrap();
    assert!(version.status.success(), "{version:?}");
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        text.contains("io.containerd.wasmhttp.v1") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    let info = Command::new(shim)
        .arg("-info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(info.status.success(), "{info:?}");
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("io.containerd.wasmhttp.v1"),
        "the runtime info names the runtime"
    );
    let bad = Command::new(shim).arg("-nonsense").output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
