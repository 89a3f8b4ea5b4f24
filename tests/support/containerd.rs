//! A private containerd for tests: its own root, state, sockets, config and compile cache under a temp dir,
//! the shim's directory first on its PATH, stopped by PID with everything it started when dropped.

use crate::binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The namespace every test works in.
pub const NAMESPACE: &str = "wasmhttp-test";

/// A running containerd of the test's own.
pub struct Containerd {
    /// Holds root, state, sockets, logs, fifos and the compile cache.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    // A missing prerequisite is a failure, never a silent skip: scripts/test.sh installs it.
    found.unwrap_or_else(|| {
        panic!("{program} is not installed: run scripts/test.sh, which installs it")
    })
}

impl Containerd {
    /// Starts containerd and waits until it answers.
    pub fn start() -> Self {
        require("containerd");
        require("ctr");
        let dir = tempfile::Builder::new()
            .prefix("wasmhttp-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
"#
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Containerd::spawn_daemon(dir.path());
        let containerd = Containerd {
            dir,
            child: Some(child),
        };
        containerd.wait_ready();
        containerd
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while !self.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `ctr` and returns its stdout, panicking with its stderr if it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Where ctr should put its fifos, so none are left in /run.
    pub fn fifo_dir(&self) -> String {
        self.dir.path().join("fifo").display().to_string()
    }

    /// Restarts containerd (same root/state), leaving shims running.
    pub fn restart(&mut self) {
        self.stop_daemon();
        let fresh = Containerd::spawn_daemon(self.dir.path());
        self.child = Some(fresh);
        self.wait_ready();
    }

    fn spawn_daemon(dir: &Path) -> Child {
        let shim_dir = binary("containerd-shim-wasmhttp-v1")
            .parent()
            .unwrap()
            .to_path_buf();
        let path = std::env::join_paths(std::iter::once(shim_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        Command::new(require("containerd"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("WASMHTTP_CACHE_DIR", dir.join("cache"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of shim processes serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let socket = self.socket().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("containerd-shim-wasmhttp-v1") && cmdline.contains(&socket)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, so their shims exit cleanly; then containerd; then anything still running.
        if self.child.is_some() {
            let tasks = self.ctr(&["task", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                std::thread::sleep(Duration::from_millis(100));
                let _ = self.ctr(&["task", "delete", "-f", id]);
            }
            let containers = self.ctr(&["container", "ls", "-q"]);
            for id in String::from_utf8_lossy(&containers.stdout).lines() {
                let _ = self.ctr(&["container", "rm", id]);
            }
        }
        self.stop_daemon();
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
