//! The shim server process on its own: what containerd sees when the server fails on the socket `start`
//! handed it, and what a server started without one says.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

/// A bundle directory as containerd makes it: the `log` fifo containerd reads (held open here, without
/// blocking) and the path of the shim's socket.
struct Bundle {
    dir: tempfile::TempDir,
    log: std::fs::File,
    socket: std::path::PathBuf,
}

impl Bundle {
    fn new() -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let log = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(dir.path().join("log"))
            .unwrap();
        let socket = dir.path().join("shim.sock");
        Bundle { dir, log, socket }
    }

    /// containerd's socket, as the shim is told it (`-address`).
    fn containerd(&self) -> std::path::PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The shim's command line as containerd runs it in this bundle, before the action.
    fn shim(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_containerd-shim-wasmhttp-v1"));
        command
            .args(["-namespace", "test", "-id", "c1", "-address"])
            .arg(self.containerd())
            .current_dir(self.dir.path());
        command
    }

    /// The shim server's command line as `start` runs it, in this bundle; stdout and stderr go nowhere.
    fn server(&self) -> Command {
        let mut command = self.shim();
        command
            .arg("-socket")
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// What the `start` action does: bind the socket, to hand the listener over as the server's stdin.
    fn listener(&self) -> Stdio {
        Stdio::from(std::os::fd::OwnedFd::from(
            UnixListener::bind(&self.socket).unwrap(),
        ))
    }
}

/// Runs `command` to its end, which must be exit code 1, and returns what it said on stderr.
fn fails_saying(command: &mut Command) -> String {
    let out = command.stderr(Stdio::piped()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    said
}

#[test]
fn a_server_that_fails_after_starting_logs_why_and_removes_its_socket() {
    let mut bundle = Bundle::new();
    let mut server = bundle
        .server()
        // Without it the server cannot publish events: a failure that comes after containerd may connect.
        .env_remove("TTRPC_ADDRESS")
        .stdin(bundle.listener())
        .spawn()
        .unwrap();
    let status = server.wait().unwrap();
    assert!(!status.success(), "the server must exit with an error");

    let mut logged = String::new();
    bundle.log.read_to_string(&mut logged).unwrap();
    assert!(
        logged.contains("shim server failed") && logged.contains("TTRPC_ADDRESS"),
        "the reason reaches containerd's log: {logged}"
    );
    assert!(
        !bundle.socket.exists(),
        "the socket of a failed server is not left behind"
    );
}

/// `delete` judges whether a live server still holds a shim's socket by the socket's peer credentials; they
/// must name the server, not the `start` action that bound the socket and exited.
#[test]
fn the_socket_names_the_server_that_serves_it_not_the_process_that_bound_it() {
    let bundle = Bundle::new();
    let mut server = bundle
        .server()
        .env(
            "TTRPC_ADDRESS",
            bundle.dir.path().join("containerd.sock.ttrpc"),
        )
        .stdin(bundle.listener())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let peer = loop {
        let stream = std::os::unix::net::UnixStream::connect(&bundle.socket).unwrap();
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .unwrap()
                .pid();
        if peer == server.id() as i32 || started.elapsed() > std::time::Duration::from_secs(5) {
            break peer;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        peer,
        server.id() as i32,
        "the socket names the server (this test, which bound it, is {})",
        std::process::id()
    );
}

/// A `start` that cannot write its reply (here, nobody reads its stdout) fails, and leaves no server, socket or
/// address file behind: containerd will not connect to it.
#[test]
fn a_start_that_cannot_answer_leaves_nothing_behind() {
    let bundle = Bundle::new();
    let (unread, stdout) = std::io::pipe().unwrap();
    drop(unread);
    let said = fails_saying(
        bundle
            .shim()
            .arg("start")
            .env(
                "TTRPC_ADDRESS",
                bundle.dir.path().join("containerd.sock.ttrpc"),
            )
            .stdin(Stdio::null())
            .stdout(stdout),
    );
    assert!(said.contains("write the start reply"), "{said}");
    let address =
        containerd_shim::socket_address(bundle.containerd().to_str().unwrap(), "test", "c1");
    let socket = address.trim_start_matches("unix://");
    assert!(!std::path::Path::new(socket).exists(), "{socket} is left");
    assert!(!bundle.dir.path().join("address").exists());
    // The server is gone when `start` exits; its broker, if it had started one, follows once the server's
    // ends of their socket pairs close.
    let started = std::time::Instant::now();
    while std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(socket))
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a process for {socket} still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run by hand, or by anything but `start`, the server has no socket to serve: it says so and binds nothing.
#[test]
fn a_server_without_the_start_actions_socket_says_so() {
    let bundle = Bundle::new();
    // No stdin, a file, and a unix socket that is connected rather than listening: none is taken for the
    // shim's socket.
    let file = bundle.dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let (connected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let inputs: [Stdio; 3] = [
        Stdio::null(),
        Stdio::from(std::fs::File::open(&file).unwrap()),
        Stdio::from(std::os::fd::OwnedFd::from(connected)),
    ];
    for stdin in inputs {
        let said = fails_saying(bundle.server().stdin(stdin));
        assert!(
            said.contains("stdin is not a listening unix socket")
                && said.contains("started by the `start` action"),
            "{said}"
        );
        assert!(!bundle.socket.exists(), "nothing is bound");
    }
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
