//! Confinement of a process that runs tenants' JIT-compiled code (the shim server, as root): once it is
//! set up, it keeps only the capabilities its caller names and installs a seccomp filter
//! ([`syscalls`]) on every thread. Which capabilities to keep is the caller's policy; this is the mechanism.
//!
//! Capabilities are per thread and inherited by the threads a thread creates, so they are dropped while the
//! server is still one thread; every later thread (the engine's workers, tokio's) starts with the reduced
//! set. The filter is installed for all threads at once and, like the bounding set, holds for the life of
//! the process.

mod filter;
pub mod landlock;
mod syscalls;

use filter::program;
pub use rustix::thread::CapabilitySet;
use rustix::thread::CapabilitySets;
use seccompiler::SeccompAction;
use std::fmt;

/// What the seccomp filter does with a call outside the allowlist (`[security] seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Refuse it with `EPERM`.
    #[default]
    Enforce,
    /// Allow it and log it to the kernel log (`dmesg`, audit type 1326): for finding what a new engine
    /// version calls.
    Log,
    /// No filter.
    Off,
}

impl SeccompMode {
    /// The configuration's spelling.
    pub fn name(self) -> &'static str {
        match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off]
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| format!("{text:?}: expected \"enforce\", \"log\" or \"off\""))
    }
}

/// Restricts file access to `files` (Landlock; `None`: unrestricted), drops every capability but `keep`
/// (from the bounding, permitted, effective, inheritable and ambient sets) and installs the seccomp filter in
/// `mode`. Must run while the process has one thread. Returns the Landlock ABI version applied.
pub fn confine(
    mode: SeccompMode,
    keep: CapabilitySet,
    files: Option<&landlock::FileRules>,
) -> Result<Option<u32>, String> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .map_err(|e| format!("cannot count this process's threads: {e}"))?;
    if threads != 1 {
        return Err(format!(
            "cannot drop capabilities: {threads} threads are running, and only the calling one would lose them"
        ));
    }
    let abi = files.map(landlock::restrict).transpose()?;
    drop_capabilities(keep).map_err(|e| format!("cannot drop capabilities: {e}"))?;
    if mode != SeccompMode::Off {
        install_filters(mode).map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    Ok(abi)
}

fn drop_capabilities(keep: CapabilitySet) -> std::io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for bit in 0..=last.min(63) {
        let capability = CapabilitySet::from_bits_retain(1 << bit);
        if !keep.contains(capability) {
            rustix::thread::remove_capability_from_bounding_set(capability)?;
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    let current = rustix::thread::capabilities(None)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: current.effective & keep,
            permitted: current.permitted & keep,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

fn install_filters(mode: SeccompMode) -> Result<(), seccompiler::Error> {
    let (outside, first) = match mode {
        SeccompMode::Log => (SeccompAction::Log, Vec::new()),
        // glibc creates threads with clone3 and falls back to clone only on ENOSYS; clone3's flags are in
        // memory a filter cannot read, clone's are an argument the allowlist checks.
        _ => (
            SeccompAction::Errno(libc::EPERM as u32),
            vec![(libc::SYS_clone3, SeccompAction::Errno(libc::ENOSYS as u32))],
        ),
    };
    let allowlist = program(syscalls::allowlist(), outside, SeccompAction::Allow, &first)?;
    seccompiler::apply_filter_all_threads(&allowlist)
}
