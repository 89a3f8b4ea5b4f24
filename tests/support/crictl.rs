//! `crictl`, the CRI client operators use on a node, pointed at a test's containerd.

use crate::containerd::{Containerd, text_holding};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The cri-tools release whose `crictl` and `critest` the tests run (see [`crate::containerd_dist`]).
pub const CRI_TOOLS: &str = "cri-tools-v1.36.0";

/// `crictl` from cri-tools' release tarball, pointed at the test's containerd by a config file of its own
/// (so nothing reads or writes the node's `/etc/crictl.yaml`).
pub struct Crictl {
    binary: PathBuf,
    config: PathBuf,
}

impl Crictl {
    /// `crictl` talking to `containerd`'s CRI, through a config file in the test's directory.
    pub fn new(containerd: &Containerd) -> Self {
        let binary = crate::containerd_dist(CRI_TOOLS).join("crictl");
        Crictl::with_binary(binary, containerd).unwrap()
    }

    /// [`Crictl::new`] with the `crictl` binary at `binary`; fails only if its config cannot be written.
    pub fn with_binary(binary: PathBuf, containerd: &Containerd) -> std::io::Result<Self> {
        let config = containerd.dir.path().join("crictl.yaml");
        let endpoint = format!("unix://{}", containerd.socket().display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 20\n"),
        )?;
        Ok(Crictl { binary, config })
    }

    /// `crictl ARGS` against the test's containerd, to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--config").arg(&self.config).args(args);
        command
    }

    /// Runs `crictl ARGS` and returns its stdout; panics with its stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = crate::succeed(&mut self.command(args));
        String::from_utf8(output.stdout).unwrap()
    }

    /// `crictl logs ID` once it holds `line` (logs are copied after the response is sent), or after 10 s
    /// whatever it holds then.
    pub fn logs_holding(&self, id: &str, line: &str) -> String {
        // Each reading starts a crictl process: less often than a file is read.
        text_holding(&[line], Duration::from_millis(100), || {
            self.ok(&["logs", id])
        })
    }

    /// Runs `crictl COMMAND -o json ARGS` and parses what it prints (crictl takes no flag after an argument).
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec![args[0], "-o", "json"];
        all.extend(&args[1..]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {out}"))
    }
}

/// Writes `value` as `name` in `dir` (crictl reads pod and container configs from files); returns its path.
pub fn write_json(dir: &Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.display().to_string()
}

/// Writes the config of a pod named `name` for `crictl runp` (and `create`) into `dir`, with a log directory
/// under `dir`; returns the config's path.
pub fn pod_json(dir: &Path, name: &str) -> String {
    let log_dir = dir.join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    write_json(
        dir,
        "pod.json",
        &serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "attempt": 0},
            "hostname": name,
            "log_directory": log_dir.display().to_string(),
            "linux": {}
        }),
    )
}
