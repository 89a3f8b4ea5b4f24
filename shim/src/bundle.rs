//! Reading an OCI bundle (config.json + rootfs) into what the runtime needs. Every error names the file
//! or key at fault.

use crate::error::{Result, ShimError};
use crate::limits::oci_limits;
use crate::rootfs::RootFs;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmhttp_runtime::{Capabilities, FileUser, Layers, Limits, Source, fold};

/// Annotation CRI puts on every container of a pod.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation CRI uses to mark the pod sandbox container.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Port an HTTP service listens on when `PORT` is not in the environment.
pub const DEFAULT_PORT: u16 = 8080;

/// A rootfs mount containerd hands to Create (overlay or bind).
#[derive(Debug, Clone, Default)]
pub struct RootfsMount {
    /// `overlay`, `bind`, …
    pub kind: String,
    /// Source path (bind mounts).
    pub source: String,
    /// Mount options (`lowerdir=…`, `upperdir=…`, `ro`, …).
    pub options: Vec<String>,
}

/// Where an HTTP service's listener lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network namespace in the spec (`ctr run --net-host`): the host's.
    Host,
    /// The namespace at this path (a pod's, or one the operator made).
    Namespace(PathBuf),
    /// A network namespace entry without a path: a fresh, empty namespace, as runc would make.
    Fresh,
}

/// What a container runs.
#[derive(Debug)]
pub enum Payload {
    /// A pod sandbox: nothing to execute, it lives until killed.
    Sandbox,
    /// A wasm binary from the rootfs.
    Wasm(Source),
    /// A wasm layer of an image in containerd's content store, read by the Task service (it needs containerd).
    ImageLayer(ImageLayer),
}

/// Where to find a wasm layer that is not a file in the rootfs.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLayer {
    /// The image named by the `wasmhttp.io/image` annotation; `None`: the container's own image.
    pub image: Option<String>,
    /// The guest's name for itself (`process.args[0]`), for messages.
    pub name: String,
    /// Why the rootfs did not do, when it was tried first: the error to give if the image has no wasm layer.
    pub not_in_rootfs: Option<String>,
}

/// Everything Create learns from the bundle.
#[derive(Debug)]
pub struct Workload {
    /// What to run.
    pub payload: Payload,
    /// The configuration layers the limits are folded from (kept for Update).
    pub layers: Layers,
    /// The limits in force: `layers` folded.
    pub limits: Limits,
    /// Args, env and preopened mounts for the guest.
    pub capabilities: Capabilities,
    /// The port an HTTP service listens on (`wasmhttp.io/port`, else `PORT`, else 8080), or why `PORT` names
    /// none. Only a service fails on the error: to a command, `PORT` is one more variable.
    pub port: std::result::Result<u16, String>,
    /// Where the listener and every outbound connection go.
    pub network: Network,
    /// The host files the spec mounts at `/etc/hosts` and `/etc/resolv.conf`: the container's resolver.
    pub resolver_files: (Option<PathBuf>, Option<PathBuf>),
    /// What it asks of the pod's `/metrics` endpoint.
    pub metrics: crate::scrape::MetricsRequest,
    /// The directories of its rootfs, topmost first, where exec'd commands are looked for (none for a pod
    /// sandbox).
    pub rootfs: Vec<PathBuf>,
    /// The read-only file mounts Create copies into the bundle before loading the guest (their directories
    /// are among the preopens).
    pub file_copies: Vec<file_mounts::FileCopy>,
}

impl Workload {
    /// Opens the guest's outbound connections in the container's network namespace, resolving with its
    /// own resolver files, and keeps them out of `denied` ranges. Called once the network is final (a pod's
    /// container learns its sandbox's namespace after the bundle is read).
    pub fn confine_outbound(&mut self, denied: Vec<wasmhttp_runtime::IpRange>) {
        let (hosts, resolv_conf) = self.resolver_files.clone();
        let dialer = crate::netns::NamespaceDialer::new(self.network.clone(), hosts, resolv_conf);
        self.capabilities.dialer = wasmhttp_runtime::SharedDialer(std::sync::Arc::new(dialer));
        self.capabilities.denied_outbound = denied;
    }
}

/// Reads `config.json` from a bundle directory.
pub fn read_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| {
        ShimError::InvalidArgument(format!("cannot read bundle config {}: {e}", path.display()))
    })
}

/// The pod sandbox a container belongs to (CRI's annotation), if any.
pub fn sandbox_id(bundle: &Path) -> Option<String> {
    read_spec(bundle)
        .ok()?
        .annotations()
        .as_ref()?
        .get(SANDBOX_ID)
        .cloned()
}

/// Whether `network` is this shim process's own namespace, named through /proc. CRI joins a pod's containers
/// to `/proc/<sandbox task pid>/ns/net`; our sandbox task is the shim itself, so that path names the host's
/// namespace and the pod's real one has to come from the sandbox container.
pub fn is_shim_netns(network: &Network) -> bool {
    let Network::Namespace(path) = network else {
        return false;
    };
    path == Path::new("/proc/self/ns/net")
        || path == Path::new(&format!("/proc/{}/ns/net", std::process::id()))
}

/// The shim grouping key: containers of one pod share a shim.
pub fn grouping_key(bundle: &Path, id: &str) -> String {
    sandbox_id(bundle).unwrap_or_else(|| id.to_string())
}

/// Reads the bundle into a [`Workload`]. `rootfs` are the mounts containerd passed to Create (empty when the
/// bundle's own `root.path` already holds the files). `node` carries the node's `[defaults]` and
/// `[ceilings]`; `linux.resources` and the `wasmhttp.io/` annotations are folded over them.
pub fn load(
    bundle: &Path,
    rootfs: &[RootfsMount],
    node: &Layers,
    max_component_size: u64,
) -> Result<Workload> {
    let spec = read_spec(bundle)?;
    let config = bundle.join("config.json");
    let invalid =
        |what: String| ShimError::InvalidArgument(format!("{}: {what}", config.display()));
    let annotations = spec.annotations().clone().unwrap_or_default();
    let network = network_of(&spec);
    let annotated = crate::annotations::parse(&annotations).map_err(invalid)?;
    let oci =
        oci_limits(spec.linux().as_ref().and_then(|l| l.resources().as_ref())).map_err(invalid)?;
    let layers = Layers {
        oci_at_create: oci.clone(),
        oci,
        overrides: annotated.limits.clone(),
        ..node.clone()
    };
    let limits = fold(&layers).map_err(|r| invalid(crate::annotations::refusal(&r)))?;
    let metrics = crate::scrape::MetricsRequest::new(annotated.metrics_port, &annotations);
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Workload {
            payload: Payload::Sandbox,
            layers,
            limits,
            capabilities: Capabilities::default(),
            port: Ok(0),
            network,
            resolver_files: (None, None),
            metrics,
            rootfs: Vec::new(),
            file_copies: Vec::new(),
        });
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no process section".into()))?;
    let args = process.args().clone().unwrap_or_default();
    // execve refuses such an argument under runc; a guest's C library would cut it short.
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!(
            "process.args[{i}] {:?} holds a NUL byte, which no argument can",
            args[i]
        )));
    }
    let entry = match (args.first().filter(|a| !a.is_empty()), &annotated.image) {
        (Some(entry), _) => entry.clone(),
        (None, Some(_)) => "app.wasm".to_string(),
        (None, None) => {
            return Err(invalid(
                "process.args is empty: args[0] must be the path of the .wasm file in the image"
                    .into(),
            ));
        }
    };
    let env = guest_env(process.env().as_deref().unwrap_or_default()).map_err(invalid)?;
    let cwd = guest_cwd(process.cwd()).map_err(invalid)?;
    let port = match (annotated.port, env.iter().find(|(k, _)| k == "PORT")) {
        (Some(port), _) => Ok(port),
        (None, None) => Ok(DEFAULT_PORT),
        // Port 0 would listen where nobody is told.
        (None, Some((_, v))) => crate::annotations::port(v).ok_or_else(|| {
            format!(
                "{}: process.env PORT={v:?} is invalid: expected {}",
                config.display(),
                crate::annotations::PORT_FORM
            )
        }),
    };
    let roots = rootfs_dirs(bundle, &spec, rootfs);
    let payload = match annotated.image {
        Some(image) => Payload::ImageLayer(ImageLayer {
            image: Some(image),
            name: entry.clone(),
            not_in_rootfs: None,
        }),
        None => from_rootfs(bundle, &roots, &spec, &entry, max_component_size).map_err(invalid)?,
    };
    let (preopens, file_copies) = mounts::guest_mounts(&spec, bundle).map_err(invalid)?;
    let file_user = file_user(process.user());
    let mut guest_args = if args.is_empty() {
        vec![entry.clone()]
    } else {
        args
    };
    guest_args[0] = guest_name(&entry);
    Ok(Workload {
        payload,
        layers,
        limits,
        capabilities: Capabilities {
            preopens,
            env,
            args: guest_args,
            cwd,
            allowed_outbound_hosts: annotated.allowed_outbound_hosts,
            file_user,
            ..Capabilities::default()
        },
        port,
        resolver_files: resolver_files(&spec, &network),
        network,
        metrics,
        rootfs: roots,
        file_copies,
    })
}

/// The guest's environment from a process's `env`, each entry checked; a later entry wins, as in a shell.
pub fn guest_env(env: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    let vars = env
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            wasmhttp_runtime::parse_env_var(kv).map_err(|e| format!("process.env[{i}]: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(wasmhttp_runtime::dedup_env(vars))
}

/// The guest's working directory from a process's `cwd`, which must be absolute as the runtime spec
/// requires; `None` for `/`, where a guest starts anyway, and for an empty one (some exec clients send none).
pub fn guest_cwd(cwd: &Path) -> std::result::Result<Option<String>, String> {
    match cwd.to_str() {
        Some("" | "/") => Ok(None),
        Some(text) if cwd.is_absolute() => Ok(Some(text.to_string())),
        _ => Err(format!(
            "process.cwd {cwd:?} is not an absolute path, as the runtime spec requires"
        )),
    }
}

/// A process's file rights: root in the container has root's, as under runc; anyone else has their own.
pub fn file_user(user: &oci_spec::runtime::User) -> Option<Arc<FileUser>> {
    (user.uid() != 0).then(|| {
        Arc::new(FileUser {
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
        })
    })
}

/// What a guest sees as its `args[0]`: the file's name, as a shell would show it.
pub fn guest_name(entry: &str) -> String {
    entry.rsplit('/').next().unwrap_or(entry).to_string()
}

/// The wasm file `entry` from the rootfs; when it is not there, the container's image may still hold it as a
/// layer of its own (a wasm artifact, which containerd does not unpack into the rootfs).
fn from_rootfs(
    bundle: &Path,
    roots: &[PathBuf],
    spec: &Spec,
    entry: &str,
    max_bytes: u64,
) -> std::result::Result<Payload, String> {
    for root in roots {
        let read = wasmhttp_runtime::confine::landlock::Access::Read;
        crate::confine::check_reachable(root, read, "a directory of the rootfs")
            .map_err(|e| e.to_string())?;
    }
    let spec_env = spec.process().as_ref().and_then(|p| p.env().as_deref());
    let found = find_command(roots, entry, spec_env.unwrap_or_default(), max_bytes)
        .map_err(|e| format!("process.args[0] {e}"))?;
    let Some((path, bytes)) = found else {
        return Ok(Payload::ImageLayer(ImageLayer {
            image: None,
            name: entry.to_string(),
            not_in_rootfs: Some(format!(
                "{}: {} ({})",
                bundle.join("config.json").display(),
                not_in_rootfs(entry),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }));
    };
    // Signed precompiled code the image may ship is looked for only if the node trusts a signer.
    let shipped = crate::rootfs::ShippedCode::new(roots.to_vec(), max_bytes);
    Ok(Payload::Wasm(
        Source::from_bytes(path, bytes).with_precompiled(std::sync::Arc::new(shipped)),
    ))
}

/// The first file `entry` names in the rootfs `roots` (see [`command_paths`]), with its path there and its
/// bytes (at most `max_bytes`); `None` if there is none. The error says what is wrong with a file found.
pub fn find_command(
    roots: &[PathBuf],
    entry: &str,
    env: &[String],
    max_bytes: u64,
) -> std::result::Result<Option<(String, Vec<u8>)>, String> {
    let fs = RootFs::new(roots);
    for candidate in command_paths(entry, env) {
        if let Some(bytes) = fs.read(&candidate, max_bytes)? {
            return Ok(Some((candidate, bytes)));
        }
    }
    Ok(None)
}

/// Why `entry` was not found by [`find_command`].
pub fn not_in_rootfs(entry: &str) -> String {
    let looked = if entry.contains('/') {
        ""
    } else {
        " (at its root or on its PATH)"
    };
    format!("process.args[0] {entry} does not exist in the container's rootfs{looked}")
}

/// Where the container looks for `entry`: a path as it is; a bare name (Kubernetes' `command: ["server"]`)
/// in each directory of the process's `PATH` (from `env`), as `execvp` in a runc container would, then at
/// the root, where images built by `wasmhttp image build` keep it. Every candidate is still resolved inside
/// the rootfs.
fn command_paths(entry: &str, env: &[String]) -> Vec<String> {
    if entry.contains('/') {
        return vec![entry.to_string()];
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .take(MAX_PATH_DIRS)
        .map(|dir| format!("{}/{entry}", dir.trim_end_matches('/')))
        .chain(std::iter::once(format!("/{entry}")))
        .collect()
}

/// The `PATH` a container without one gets (runc's and Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How many `PATH` directories a lookup tries: a spec's `PATH` is the tenant's, and each try reads the layers.
const MAX_PATH_DIRS: usize = 32;

fn network_of(spec: &Spec) -> Network {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    match namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
    {
        None => Network::Host,
        Some(ns) => match ns.path() {
            Some(path) if !path.as_os_str().is_empty() => Network::Namespace(path.clone()),
            _ => Network::Fresh,
        },
    }
}

/// The directories that make up the rootfs, topmost first.
fn rootfs_dirs(bundle: &Path, spec: &Spec, mounts: &[RootfsMount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for mount in mounts {
        if mount.kind == "overlay" {
            // Reading the layers directly needs no mount, so nothing is left mounted behind us.
            for option in &mount.options {
                if let Some(upper) = option.strip_prefix("upperdir=") {
                    dirs.insert(0, PathBuf::from(upper));
                } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                    dirs.extend(lower.split(':').map(PathBuf::from));
                }
            }
        } else if !mount.source.is_empty() {
            dirs.push(PathBuf::from(&mount.source));
        }
    }
    if dirs.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into());
        dirs.push(if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        });
    }
    dirs
}

/// The host files behind the container's `/etc/hosts` and `/etc/resolv.conf`: the mounts its spec names
/// (CRI adds them), else, in the host's network, the host's own.
fn resolver_files(spec: &Spec, network: &Network) -> (Option<PathBuf>, Option<PathBuf>) {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let mounted = |destination: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.destination() == Path::new(destination))
            .and_then(|m| m.source().clone())
            .or_else(|| (*network == Network::Host).then(|| PathBuf::from(destination)))
    };
    (mounted("/etc/hosts"), mounted("/etc/resolv.conf"))
}

pub mod file_mounts;
mod mounts;
pub use mounts::bind_mount;
#[cfg(test)]
mod tests;
