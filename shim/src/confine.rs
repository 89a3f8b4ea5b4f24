//! The shim server's confinement policy: which capabilities it keeps, which files it may reach, and how
//! `start` passes the node configuration's part of both down. The mechanism (and the syscall allowlist) is
//! [`wasmhttp_runtime::confine`].
//!
//! Files (Landlock, `[security] landlock`): the server reaches
//! - read and write: containerd's state directory (bundles, CRI's fifos and `/dev/shm`, the shim sockets),
//!   the compile cache, `[security] host-paths` (by default kubelet's directory, ctr's fifo directory and
//!   `/var/log/wasmhttp` for `--log-uri file://` logs), and what the first container's spec names (its rootfs
//!   directory and bind-mount sources: `ctr run --rootfs` and `--mount`; a pod's first container is its
//!   sandbox, whose spec containerd writes);
//! - read only: containerd's root (image snapshots, CRI's `/etc/hosts` and `/etc/resolv.conf` files), found
//!   through the bundle's `work` link; the node configuration file;
//!   `/proc`, `/sys/fs/cgroup`, `/run/netns`, the host's `/etc/hosts` and `/etc/resolv.conf`.
//!
//! A container whose stdio, mounts, resolver files or rootfs layers lie elsewhere is refused at Create, naming
//! the path.

use crate::error::{Result, ShimError};
use crate::node_config::NodeConfig;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use wasmhttp_runtime::confine::landlock::{Access, FileRules};
use wasmhttp_runtime::confine::{CapabilitySet, SeccompMode};

/// The environment variable through which the `start` action tells the server it spawns which
/// [`SeccompMode`] the node configuration asks for (it reads containerd's runtime options; the server gets
/// none until the first Create).
pub const SECCOMP_MODE_ENV: &str = "WASMHTTP_SHIM_SECCOMP";

/// The environment variable through which `start` passes the node configuration's file rules ([`encode`]):
/// `off`, or one `r PATH` / `w PATH` line per path.
pub const FILE_RULES_ENV: &str = "WASMHTTP_SHIM_FILES";

/// The capabilities the server keeps:
/// - `SYS_ADMIN`: entering a pod's network namespace (`setns`) and creating one for a container that asks
///   for a new namespace (`unshare`); the filter allows both calls only for network namespaces;
/// - `NET_BIND_SERVICE`: services listening on ports below 1024;
/// - `DAC_OVERRIDE`, `DAC_READ_SEARCH`, `FOWNER`: reading image layers and bundles whatever their owners,
///   and the file access of guests whose container runs as root;
/// - `SETUID`, `SETGID`: giving a thread a container user's file-system ids and groups while it polls that
///   container's guest (the filter allows `setfsuid`, `setfsgid` and `setgroups`, not `setuid` and the like).
pub const KEPT: CapabilitySet = CapabilitySet::SYS_ADMIN
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETGID);

/// The host files every server may read whatever the node says: its own process information, cgroup limits,
/// named network namespaces, and the host's resolver files (for containers in the host's network).
const SYSTEM_READ: &[&str] = &[
    "/proc",
    "/sys/fs/cgroup",
    "/run/netns",
    "/var/run/netns",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/dev/urandom",
];

/// The rules in force in this process, once the server applied them.
static APPLIED: OnceLock<FileRules> = OnceLock::new();

/// The node configuration's part of the file rules, for `start` to pass down (`None`: `landlock = "off"`).
/// Fails when Landlock is asked for and the kernel has none: the server does not run unconfined silently.
pub fn node_file_rules(node: &NodeConfig, config_file: Option<&Path>) -> Result<Option<FileRules>> {
    if !node.security.landlock {
        return Ok(None);
    }
    if wasmhttp_runtime::confine::landlock::abi().is_none() {
        return Err(ShimError::FailedPrecondition(
            "the node configuration asks for [security] landlock = \"enforce\", but this kernel has no \
             Landlock (Linux 5.13 or later, with landlock in its lsm= list); set landlock = \"off\" to run \
             the shim server without file confinement"
                .into(),
        ));
    }
    let mut rules = FileRules::default();
    // A rule needs an existing directory. The engine checks the cache's owner and mode when it opens it.
    let create = |dir: &Path, mode: u32| {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir);
    };
    if let Some(cache) = &node.engine.cache_dir {
        create(cache, 0o700);
        rules.allow(cache, Access::ReadWrite);
    }
    // Every Create reads the configuration again, and one that does not parse must still say why.
    if let Some(file) = config_file {
        rules.allow(file, Access::Read);
    }
    for path in &node.security.host_paths {
        if path == Path::new(crate::node_config::LOG_DIR) {
            create(path, 0o755);
        }
        rules.allow(path, Access::ReadWrite);
    }
    Ok(Some(rules))
}

/// `rules` as [`FILE_RULES_ENV`] carries them.
pub fn encode(rules: Option<&FileRules>) -> String {
    let Some(rules) = rules else {
        return "off".into();
    };
    rules
        .paths
        .iter()
        .map(|(path, access)| {
            let letter = if *access == Access::Read { 'r' } else { 'w' };
            format!("{letter} {}", path.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The inverse of [`encode`].
pub fn decode(text: &str) -> std::result::Result<Option<FileRules>, String> {
    if text == "off" {
        return Ok(None);
    }
    let mut rules = FileRules::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let access = match line.split_at_checked(2) {
            Some(("r ", path)) => (path, Access::Read),
            Some(("w ", path)) => (path, Access::ReadWrite),
            _ => return Err(format!("{FILE_RULES_ENV}: cannot read {line:?}")),
        };
        rules.allow(access.0, access.1);
    }
    Ok(Some(rules))
}

/// Completes the node's rules with what the server finds: containerd's state and root (from the bundle
/// directory it runs in), the socket's directory, what the first container's spec names, and
/// [`SYSTEM_READ`].
pub fn server_file_rules(mut rules: FileRules, bundle: &Path, socket: &Path) -> FileRules {
    rules.allow(state_dir(bundle), Access::ReadWrite);
    match containerd_root(bundle) {
        Some(root) => rules.allow(root, Access::Read),
        None => tracing::warn!(
            bundle = %bundle.display(),
            "the bundle has no `work` link into containerd's root: image snapshots will be out of reach"
        ),
    }
    if let Some(dir) = socket.parent() {
        rules.allow(dir, Access::ReadWrite);
    }
    if let Ok(spec) = crate::bundle::read_spec(bundle) {
        for (path, access) in spec_paths(&spec, bundle) {
            rules.allow(path, access);
        }
    }
    for path in SYSTEM_READ {
        rules.allow(*path, Access::Read);
    }
    rules.allow("/dev/null", Access::ReadWrite);
    rules
}

/// containerd's root directory (image snapshots, CRI's per-pod files): containerd links a bundle's `work` to
/// `ROOT/PLUGIN/NAMESPACE/ID`.
fn containerd_root(bundle: &Path) -> Option<PathBuf> {
    let work = std::fs::read_link(bundle.join("work")).ok()?;
    let root = work.ancestors().nth(3)?;
    (root.is_absolute() && root != Path::new("/")).then(|| root.to_path_buf())
}

/// containerd's state directory: bundles are `STATE/PLUGIN/NAMESPACE/ID`, where `PLUGIN` is the task
/// manager's directory (`io.containerd.runtime.v2.task`) or, for a Sandbox API pod's shim, the sandbox
/// controller's (`io.containerd.sandbox.controller.v1.shim`). A bundle elsewhere (a containerd that lays them
/// out otherwise) gives its namespace directory alone.
pub fn state_dir(bundle: &Path) -> PathBuf {
    let plugin_dir = bundle.parent().and_then(Path::parent);
    match plugin_dir {
        Some(dir)
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("io.containerd.")) =>
        {
            dir.parent().unwrap_or(dir).to_path_buf()
        }
        _ => bundle.parent().unwrap_or(bundle).to_path_buf(),
    }
}

/// The host paths a spec names: its root directory (read) and its bind mounts' sources.
fn spec_paths(spec: &oci_spec::runtime::Spec, bundle: &Path) -> Vec<(PathBuf, Access)> {
    let mut paths = Vec::new();
    if let Some(root) = spec.root() {
        paths.push((bundle.join(root.path()), Access::Read));
    }
    for mount in spec.mounts().iter().flatten() {
        if let Some((source, read_only)) = crate::bundle::bind_mount(mount) {
            paths.push((source.clone(), access(read_only)));
        }
    }
    paths
}

/// The access a mount's `ro` option leaves.
pub fn access(read_only: bool) -> Access {
    if read_only {
        Access::Read
    } else {
        Access::ReadWrite
    }
}

/// Confines this process (one thread, before the server starts its runtime) in `mode`, keeping [`KEPT`],
/// and to `files` when given; the log says how long it took since `started` (finding the paths included).
pub fn confine(
    mode: SeccompMode,
    files: Option<FileRules>,
    started: std::time::Instant,
) -> std::result::Result<(), String> {
    let abi = wasmhttp_runtime::confine::confine(mode, KEPT, files.as_ref())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let (Some(files), Some(abi)) = (files, abi) {
        let paths = files.paths.len();
        tracing::info!(
            ms,
            "shim confined: seccomp {mode}, Landlock ABI {abi} over {paths} paths"
        );
        // Resolved once here, not on every check at Create.
        let _ = APPLIED.set(files.resolved());
    } else {
        tracing::info!(ms, "shim confined: seccomp {mode}, Landlock off");
    }
    Ok(())
}

/// Refuses `path` (`what` names it: "stdout", "the mount at /data") when the server's file rules do not
/// give it `access`.
pub fn check_reachable(path: &Path, access: Access, what: &str) -> Result<()> {
    match APPLIED.get() {
        Some(rules) if !rules.reaches(path, access) => Err(ShimError::InvalidArgument(format!(
            "{what} is {}, outside the host paths this shim may {} (containerd's state and root, the \
             compile cache, the first container's rootfs and mounts); list it in the node configuration's \
             [security] host-paths",
            path.display(),
            if access == Access::Read {
                "read"
            } else {
                "write"
            }
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pass_through_the_environment_unchanged() {
        let mut rules = FileRules::default();
        rules.allow("/var/lib/wasmhttp/cache", Access::ReadWrite);
        rules.allow("/etc/wasmhttp/config.toml", Access::Read);
        rules.allow("/srv/with space", Access::ReadWrite);
        assert_eq!(decode(&encode(Some(&rules))).unwrap(), Some(rules));
        assert_eq!(decode(&encode(None)).unwrap(), None);
        assert!(decode("x /etc").unwrap_err().contains(FILE_RULES_ENV));
    }

    #[test]
    fn the_root_directory_is_where_the_bundles_work_link_points() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        assert_eq!(containerd_root(&bundle), None);
        let work = "/var/lib/containerd/io.containerd.runtime.v2.task/k8s.io/abc";
        std::os::unix::fs::symlink(work, bundle.join("work")).unwrap();
        assert_eq!(
            containerd_root(&bundle),
            Some(PathBuf::from("/var/lib/containerd"))
        );
    }

    #[test]
    fn the_state_directory_is_found_above_the_bundles() {
        assert_eq!(
            state_dir(Path::new(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"
            )),
            Path::new("/run/containerd")
        );
        assert_eq!(
            state_dir(Path::new(
                "/run/k3s/containerd/io.containerd.sandbox.controller.v1.shim/k8s.io/pod"
            )),
            Path::new("/run/k3s/containerd")
        );
        assert_eq!(
            state_dir(Path::new("/srv/bundles/abc")),
            Path::new("/srv/bundles")
        );
    }
}
