//! The shim server's confinement policy: which capabilities it keeps and how `start` passes the seccomp
//! mode down. The mechanism (and the allowlist) is [`wasmhttp_runtime::confine`].

use wasmhttp_runtime::confine::{CapabilitySet, SeccompMode};

/// The environment variable through which the `start` action tells the server it spawns which
/// [`SeccompMode`] the node configuration asks for (it reads containerd's runtime options; the server gets
/// none until the first Create).
pub const SECCOMP_MODE_ENV: &str = "WASMHTTP_SHIM_SECCOMP";

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

/// Confines this process (one thread, before the server starts its runtime) in `mode`, keeping [`KEPT`].
pub fn confine(mode: SeccompMode) -> Result<(), String> {
    wasmhttp_runtime::confine::confine(mode, KEPT)
}
