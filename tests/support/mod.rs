//! Helpers for the end-to-end tests: where the built binaries and example guests are, and a tiny
//! HTTP client over real sockets.

pub mod containerd;
pub mod cri;
pub mod crictl;
pub mod dns;
pub mod load;
pub mod netns;
pub mod prometheus;
pub mod registry;

use std::path::PathBuf;
use std::process::Child;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary built from this workspace (`cargo build --workspace`, which the test script runs first),
/// looked up next to the running test executable so debug and release runs each find their own.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Runs `command` and returns its output, panicking with its stdout and stderr if it fails.
pub fn succeed(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Builds an image of example guest `name` with `wasmhttp image build --format FORMAT`, tagged `reference`,
/// into the image-layout tar `out`; panics with the CLI's error if that fails.
pub fn build_image(name: &str, reference: &str, format: &str, out: &std::path::Path) {
    succeed(
        std::process::Command::new(binary("wasmhttp"))
            .args(["image", "build", example(name).to_str().unwrap()])
            .args(["-t", reference, "--format", format, "-o"])
            .arg(out),
    );
}

/// The directory of one containerd release's binaries (`1.7.34`, `2.3.4`, `system` for Debian's), or of
/// cri-tools (`cri-tools-v1.36.0`): unpacked and verified by `scripts/containerd.sh` from the tarballs in
/// `$WASMHTTP_CONTAINERD_DIST`. A missing or altered tarball fails the test.
pub fn containerd_dist(version: &str) -> PathBuf {
    let output = succeed(&mut dist_command(version));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// [`containerd_dist`] for clean-up code, which must not panic: `None` where that would fail.
pub fn try_containerd_dist(version: &str) -> Option<PathBuf> {
    let output = dist_command(version).output().ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn dist_command(version: &str) -> std::process::Command {
    let mut command = std::process::Command::new("bash");
    command
        .arg(workspace().join("scripts/containerd.sh"))
        .arg(version);
    command
}

/// `$PATH` with `dir` in front: how the tests put the built binaries on a child's PATH.
pub fn path_with(dir: &std::path::Path) -> std::ffi::OsString {
    std::env::join_paths(
        std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .unwrap()
}

/// An example guest built by `examples/build.sh`.
pub fn example(name: &str) -> PathBuf {
    let path = workspace()
        .join("examples/wasm")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run examples/build.sh first",
        path.display()
    );
    path
}

pub use wasmhttp_test_client::{Reply, get, request};

/// A child process that is killed (and reaped) when the guard drops, so a failing test leaves nothing
/// running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
