//! What a guest may touch. The default is nothing: no directories, no host environment, no network.

use crate::identity::{FileUser, as_shim};
use crate::outbound::{IpRange, OutboundPolicy, SharedDialer, default_denied_ranges};
use crate::output::InstanceOutput;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the guest sees it at.
    pub guest: String,
    /// Whether the guest is refused writes.
    pub read_only: bool,
}

/// Everything a guest is granted. `Capabilities::default()` grants nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Directories the guest can open.
    pub preopens: Vec<Preopen>,
    /// Environment variables the guest sees (the host's are never inherited).
    pub env: Vec<(String, String)>,
    /// Arguments the guest sees, `args[0]` included.
    pub args: Vec<String>,
    /// Hosts (`name` or `name:port`, or `*` for any) the guest may send outbound HTTP requests to.
    pub allowed_outbound_hosts: Vec<String>,
    /// Address ranges no outbound request may reach, whatever its host resolves to (by default
    /// [`default_denied_ranges`]: link-local, where cloud metadata answers).
    pub denied_outbound: Vec<IpRange>,
    /// Where outbound connections are resolved and opened (by default the host's network).
    pub dialer: SharedDialer,
    /// The user whose rights the guest's file access in [`Capabilities::preopens`] has, when it is not
    /// the runtime's own (a container's `process.user` other than root).
    pub file_user: Option<Arc<FileUser>>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            preopens: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            denied_outbound: default_denied_ranges(),
            dialer: SharedDialer::default(),
            file_user: None,
        }
    }
}

impl Capabilities {
    /// Checks that every preopened directory exists and that the runtime can take on the file user's
    /// rights, so a mistake fails at load time and not per request.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let Some(user) = self.guest_file_user() {
            user.check().map_err(|e| {
                crate::Error::Capability(format!(
                    "cannot give the guest the file rights of user {}:{} (this needs CAP_SETUID and \
                     CAP_SETGID): {e}",
                    user.uid, user.gid
                ))
            })?;
        }
        for preopen in &self.preopens {
            if !preopen.host.is_dir() {
                return Err(crate::Error::Capability(format!(
                    "preopened directory {} (guest path {}) does not exist or is not a directory",
                    preopen.host.display(),
                    preopen.guest
                )));
            }
        }
        Ok(())
    }

    /// A WASI context builder with exactly these grants and the given output streams.
    pub(crate) fn wasi_builder(
        &self,
        stdout: InstanceOutput,
        stderr: InstanceOutput,
    ) -> wasmtime::Result<WasiCtxBuilder> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout)
            .stderr(stderr)
            .args(&self.args)
            .envs(&self.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        // Path operations run on the polling thread, which has the file user's rights (crate::identity).
        builder.allow_blocking_current_thread(self.guest_file_user().is_some());
        for preopen in &self.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            // The shim opens the volume, as runc mounts it; what is inside is the user's to reach.
            as_shim(|| builder.preopened_dir(&preopen.host, &preopen.guest, perms))?;
        }
        Ok(builder)
    }

    /// The user whose rights the guest's tasks are polled with: none when the guest has no directories.
    pub(crate) fn guest_file_user(&self) -> Option<Arc<FileUser>> {
        self.file_user.clone().filter(|_| !self.preopens.is_empty())
    }

    /// The outbound gate of an instance whose requests are charged to `meter`.
    pub(crate) fn outbound_policy(&self, meter: Arc<crate::cpu::CpuMeter>) -> OutboundPolicy {
        OutboundPolicy {
            allowed_hosts: Arc::from(self.allowed_outbound_hosts.as_slice()),
            denied: Arc::from(self.denied_outbound.as_slice()),
            dialer: self.dialer.clone(),
            meter,
            traceparent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_preopen_is_named() {
        let caps = Capabilities {
            preopens: vec![Preopen {
                host: "/no/such/dir".into(),
                guest: "/data".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        assert!(
            caps.validate()
                .unwrap_err()
                .to_string()
                .contains("/no/such/dir")
        );
    }
}
