//! A private containerd for tests: its own root, state, sockets, config and compile cache under a temp dir,
//! the shim's directory first on its PATH, stopped by PID with everything it started when dropped.

mod process;
mod task;
mod wait;

pub use process::{process_cpu, process_rss, shim_socket};
pub use task::*;
pub use wait::*;

use crate::binary;
use process::process_runs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The runtime type containerd maps to our shim binary.
pub const RUNTIME: &str = "io.containerd.wasmhttp.v1";

/// The namespace every test works in.
pub const NAMESPACE: &str = "wasmhttp-test";

/// A running containerd of the test's own.
pub struct Containerd {
    /// Holds root, state, sockets, logs, fifos and the compile cache.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Whether its CRI plugin runs (tests of pods).
    cri: bool,
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

/// The version of the `containerd` on PATH, as `containerd --version` prints it (`v2.3.4`, `1.6.20~ds1`).
pub fn version() -> String {
    let output = Command::new(require("containerd"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// Whether this is containerd 1.6, which unpacks every layer of an image and so cannot pull one whose wasm
/// is a layer of its own (1.7.7 and later skip layers that are not filesystems).
pub fn is_1_6() -> bool {
    version().trim_start_matches('v').starts_with("1.6.")
}

/// containerd's major version.
pub fn major_version() -> u32 {
    version()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("cannot read containerd's version from {:?}", version()))
}

/// The containerd matrix (scripts/test.sh) names the version each run means to test in
/// `WASMHTTP_CONTAINERD_VERSION`; a PATH that finds another one must fail, not pass on the wrong version.
fn check_version() {
    if let Ok(wanted) = std::env::var("WASMHTTP_CONTAINERD_VERSION") {
        let found = version();
        assert_eq!(
            found.trim_start_matches('v'),
            wanted,
            "WASMHTTP_CONTAINERD_VERSION is {wanted}, but the containerd on PATH is {found}"
        );
    }
}

impl Containerd {
    /// Starts containerd (CRI disabled) and waits until it answers.
    pub fn start() -> Self {
        Containerd::start_with(|_| None)
    }

    /// Starts containerd with the CRI plugin configured by the TOML `cri(dir)` returns for the temp dir
    /// (`None`: CRI disabled), and waits until it answers.
    pub fn start_with(cri: impl FnOnce(&Path) -> Option<String>) -> Self {
        require("containerd");
        require("ctr");
        check_version();
        let dir = tempfile::Builder::new()
            .prefix("wasmhttp-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        let cri = cri(dir.path());
        let with_cri = cri.is_some();
        let disabled = if with_cri {
            ""
        } else {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
{}
"#,
            cri.unwrap_or_default()
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Containerd::spawn_daemon(dir.path());
        let containerd = Containerd {
            dir,
            child: Some(child),
            cri: with_cri,
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

    /// The last `lines` lines of containerd's log (the shim's lines included), for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `ctr` against this containerd in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` against this containerd in `namespace` (CRI works in `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Waits (up to 10 s) until containerd's log holds `text`: shim logs reach it through a pipe
    /// containerd copies from, so a line may land just after the request that caused it was answered.
    pub fn wait_for_log(&self, text: &str) {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "containerd's log never showed {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

    /// Where ctr should put its fifos, so none are left in /run: in containerd's state, as ctr's default
    /// (`/run/containerd/fifo`) is in the default state directory, where the confined shim can open them.
    pub fn fifo_dir(&self) -> String {
        self.dir.path().join("state/fifo").display().to_string()
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
        let path = crate::path_with(&shim_dir);
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

    /// Waits (up to 10 s) until no shim of this containerd runs, nor its broker; panics if one still does, or
    /// if a broker refused an event of its own shim's containers.
    pub fn assert_shims_exit(&self) {
        let started = Instant::now();
        let running = || [self.shim_pids(), self.broker_pids()].concat();
        while !running().is_empty() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.shim_pids().is_empty(), "the pod's shim exited");
        assert!(self.broker_pids().is_empty(), "the shim's broker exited");
        let refused: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("broker refused an event"))
            .map(str::to_string)
            .collect();
        assert!(
            refused.is_empty(),
            "a broker refused events of its own shim: {refused:#?}"
        );
    }

    /// PIDs of shim processes serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        self.pids_named("containerd-shim-wasmhttp-v1")
    }

    /// The shim brokers (one per shim server, spawned by it) of this containerd.
    pub fn broker_pids(&self) -> Vec<i32> {
        self.pids_named("wasmhttp-broker")
    }

    /// PIDs of processes whose program (`argv[0]`'s file name) is `name` and whose command line names this
    /// containerd's socket.
    fn pids_named(&self, name: &str) -> Vec<i32> {
        let socket = self.socket().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                let program = cmdline.split('\0').next().unwrap_or_default();
                program.rsplit('/').next() == Some(name) && cmdline.contains(&socket)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, so their shims exit cleanly; then containerd; then anything still running.
        if self.child.is_some() {
            if self.cri {
                self.remove_pods();
            }
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
        // Shims still running now serve what a test left behind (a CRI pod, in a namespace the loop above does
        // not list). With containerd gone nothing runs their `delete` action, so their sockets, outside this
        // directory under /run/containerd/s/, are removed here once they are dead.
        let shims = self.shim_pids();
        let sockets: Vec<PathBuf> = shims.iter().copied().filter_map(shim_socket).collect();
        let left = [shims, self.broker_pids()].concat();
        for &pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let started = Instant::now();
        while left.iter().any(|pid| process_runs(*pid))
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        self.unmount_all();
    }
}

impl Containerd {
    /// Stops and removes every pod through CRI, as the kubelet would: a pod a test left behind (critest leaves a
    /// failed spec's) otherwise keeps its network (namespace, veth, iptables rules) and its `/dev/shm` mount
    /// after containerd stops. Never panics: it runs while the test may be unwinding.
    fn remove_pods(&self) {
        let crictl = crate::try_containerd_dist(crate::crictl::CRI_TOOLS)
            .map(|dist| crate::crictl::Crictl::with_binary(dist.join("crictl"), self));
        if let Some(Ok(crictl)) = crictl {
            let _ = crictl.command(&["rmp", "--all", "--force"]).output();
        }
    }

    /// Detaches whatever is still mounted inside the temp dir (a sandbox's `/dev/shm` CRI did not get to
    /// unmount), deepest first, so that the directory can be removed.
    fn unmount_all(&self) {
        let dir = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut inside: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| point.starts_with(&format!("{dir}/")))
            .collect();
        inside.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in inside {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
