//! A private containerd for tests: its own root, state, sockets, config and compile cache under a temp dir,
//! the shim's directory first on its PATH, stopped by PID with everything it started when dropped.

use crate::{binary, get};
use std::net::{SocketAddr, TcpListener};
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

/// The socket a shim server serves containerd on (its `-socket` argument), if `pid` is one.
pub fn shim_socket(pid: i32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-socket")?;
    Some(args.get(at + 1)?.trim_start_matches("unix://").into())
}

/// Whether `pid` exists and is not a zombie (killed processes that containerd started are reaped by it or
/// by init, not by the test).
fn process_runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Builds an image of an example with `wasmhttp image build` and imports it; returns its reference.
pub fn import_example(containerd: &Containerd, name: &str) -> String {
    import_example_in(containerd, NAMESPACE, name)
}

/// [`import_example`] into another containerd namespace (CRI's is `k8s.io`).
pub fn import_example_in(containerd: &Containerd, namespace: &str, name: &str) -> String {
    let reference = format!("docker.io/wasmhttp-test/{name}:latest");
    let tar = containerd.dir.path().join(format!("{name}.tar"));
    crate::build_image(name, &reference, "layer", &tar);
    let imported = containerd.ctr_in(namespace, &["image", "import", tar.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "ctr image import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    reference
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The text of the log file at `path` once it holds every one of `lines`, or what it holds after 10 s. Guest
/// output reaches containerd's log through a writer thread of its own, so a response can come before its
/// log lines are written.
pub fn log_holding(path: &Path, lines: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if lines.iter().all(|line| text.contains(line))
            || started.elapsed() > Duration::from_secs(10)
        {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `addr` until `/` answers 200; returns the body.
pub fn wait_for_200(addr: SocketAddr) -> String {
    wait_for_200_at(addr, "/")
}

/// Polls `addr` until `target` answers 200; returns the body. Connects with a timeout, since a pod IP
/// that is not up yet drops packets rather than refusing them.
pub fn wait_for_200_at(addr: SocketAddr, target: &str) -> String {
    try_wait_for_200_at(addr, target).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`wait_for_200_at`], but says what it last got instead of panicking, so that a caller can add what
/// it knows (containerd's log, say).
pub fn try_wait_for_200_at(addr: SocketAddr, target: &str) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let last = match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => {
                let reply = get(addr, target);
                if reply.status == 200 {
                    return Ok(reply.body);
                }
                format!("{} {:?}", reply.status, reply.body)
            }
            Err(e) => format!("connect: {e}"),
        };
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{addr}{target} never answered 200 (last: {last})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ctr run <mode> --runtime io.containerd.wasmhttp.v1 --fifo-dir <private> ARGS…`: the runtime and a fifo
/// directory inside the test's temp dir, so no fifo is left in /run.
pub fn ctr_run(containerd: &Containerd, mode: &str, args: &[&str]) -> std::process::Output {
    ctr_run_in(containerd, NAMESPACE, mode, args)
}

/// [`ctr_run`] in another containerd namespace.
pub fn ctr_run_in(
    containerd: &Containerd,
    namespace: &str,
    mode: &str,
    args: &[&str],
) -> std::process::Output {
    let fifo_dir = containerd.fifo_dir();
    let mut all = vec!["run", mode, "--runtime", RUNTIME, "--fifo-dir", &fifo_dir];
    all.extend_from_slice(args);
    containerd.ctr_in(namespace, &all)
}

/// `ctr run -d` of an HTTP service on the host network, on `port`.
pub fn run_service(containerd: &Containerd, image: &str, id: &str, port: u16, extra: &[&str]) {
    let port_env = format!("PORT={port}");
    let mut args = vec!["--net-host", "--env", &port_env];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, id]);
    let output = ctr_run(containerd, "-d", &args);
    assert!(
        output.status.success(),
        "ctr run -d {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The task's status column in `ctr task ls` (`MISSING` when absent).
pub fn task_status(containerd: &Containerd, id: &str) -> String {
    let listing = containerd.ctr_ok(&["task", "ls"]);
    listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or("MISSING")
        .to_string()
}

/// Writes a node configuration (for `--runtime-config-path`) into `dir` that lists `dir` in `[security]
/// host-paths`, so the confined shim may write a log file there, and returns its path.
pub fn node_config_listing(dir: &Path) -> PathBuf {
    let node = dir.join("node.toml");
    std::fs::write(&node, format!("[security]\nhost-paths = [{dir:?}]\n")).unwrap();
    node
}

/// SIGKILLs the task `id` and waits until it is stopped.
pub fn kill_now(containerd: &Containerd, id: &str) {
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    wait_for_status(containerd, id, "STOPPED");
}

/// Waits until `ctr task ls` shows `status` for `id`.
pub fn wait_for_status(containerd: &Containerd, id: &str, status: &str) {
    let started = Instant::now();
    while task_status(containerd, id) != status {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id} never became {status}: {}",
            task_status(containerd, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls containerd's Tasks `Update` API with OCI `LinuxResources` JSON, as CRI's
/// `UpdateContainerResources` and `nerdctl update` do (`ctr` 1.6 has no update command).
pub fn update_resources(
    containerd: &Containerd,
    id: &str,
    resources_json: &str,
) -> Result<(), String> {
    use containerd_client::services::v1::UpdateTaskRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = containerd_client::connect(containerd.socket())
            .await
            .map_err(|e| format!("cannot connect to containerd: {e}"))?;
        let mut request = tonic::Request::new(UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: resources_json.as_bytes().to_vec(),
            }),
            annotations: Default::default(),
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", NAMESPACE.parse().unwrap());
        TasksClient::new(channel)
            .update(request)
            .await
            .map(|_| ())
            .map_err(|status| status.message().to_string())
    })
}

/// CPU time (user + system) the process `pid` has used so far.
pub fn process_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis(ticks * 10)
}

/// Resident memory of the process `pid`, in bytes.
pub fn process_rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// One numeric line of `ctr task metrics ID` (cgroup v1 names such as `cpuacct.usage`).
pub fn metric(containerd: &Containerd, id: &str, key: &str) -> u64 {
    metric_at(&containerd.socket(), id, key)
}

/// [`metric`] for a containerd known by its socket, so sampling threads can call it.
pub fn metric_at(socket: &Path, id: &str, key: &str) -> u64 {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", NAMESPACE, "task", "metrics", id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&output.stdout);
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {metrics}"))
}
