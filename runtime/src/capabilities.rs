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
    /// The working directory the guest starts in (`wasi:cli/environment.initial-cwd`), against which its C
    /// library resolves relative paths; `None` for `/`.
    pub cwd: Option<String>,
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
            cwd: None,
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
        if let Some(cwd) = &self.cwd {
            builder.initial_cwd(cwd);
        }
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

/// What an outbound-host grant looks like, completing "expected …".
pub const ALLOWED_HOST_FORM: &str = "a host or host:port such as api.example.com or db:8080 (an IPv6 \
                                     address in brackets, [fd00::1]:80; * for any host)";

/// Parses one outbound-host grant (a `--allow-host` flag, one entry of `wasmhttp.io/allowed-outbound-hosts`)
/// into the form the outbound gate matches: a lower-case name or IP literal, with a port from 1 to 65535 or
/// none, or `*`. A URL, a path, a user or an empty name would never match a request: such a grant is
/// refused, not kept as a grant of nothing.
pub fn parse_allowed_host(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_string());
    }
    let bad = || format!("{text:?} is not a host or host:port: expected {ALLOWED_HOST_FORM}");
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
            ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (&text[..ip.len() + 2], port)
        }
        None => {
            let (host, port) = text
                .split_once(':')
                .map_or((text, None), |(h, p)| (h, Some(p)));
            let label = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if host.len() > 253 || !host.split('.').all(label) {
                return Err(bad());
            }
            (host, port)
        }
    };
    let port = match port {
        None => String::new(),
        Some(p) => match p.parse::<u16>() {
            Ok(n @ 1..) => format!(":{n}"),
            _ => return Err(bad()),
        },
    };
    Ok(format!("{}{port}", host.to_ascii_lowercase()))
}

/// Parses one environment variable (a `--env` flag, an entry of a container's `process.env`) as runc
/// takes it: `KEY=VALUE` with a non-empty key, and no NUL byte, which would cut the variable short in the
/// guest's C library.
pub fn parse_env_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) | None => Err(format!("{text:?} is not KEY=VALUE")),
        Some(_) if text.contains('\0') => Err(format!(
            "{text:?} holds a NUL byte, which no environment variable can"
        )),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
    }
}

/// The environment a guest sees from `vars` in order: a key given more than once has its last value, at
/// the place of its last occurrence, as a process run by runc (or a shell) sees it.
pub fn dedup_env(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<_> = vars
        .into_iter()
        .rev()
        .filter(|(key, _)| seen.insert(key.clone()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_host_grants_are_checked_and_lower_cased() {
        for (text, grant) in [
            ("api.Example.com", "api.example.com"),
            (" db:8080 ", "db:8080"),
            ("10.0.0.7:80", "10.0.0.7:80"),
            ("[FD00::1]:443", "[fd00::1]:443"),
            ("[::1]", "[::1]"),
            ("*", "*"),
        ] {
            assert_eq!(parse_allowed_host(text).as_deref(), Ok(grant), "{text}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "http://x/",
            "user@host",
            "a..b",
            "x:0",
            "x:99999",
            "x:",
            "::1",
            "fd00::1",
            "[::1",
            "[nope]:80",
            "[::1]80",
            "exa mple.com",
            "*.example.com",
            &long,
        ] {
            let err = parse_allowed_host(bad).unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn environment_variables_are_key_value_and_the_last_of_a_key_wins() {
        assert_eq!(parse_env_var("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_var("EMPTY="), Ok(("EMPTY".into(), String::new())));
        for bad in ["NOVALUE", "=x"] {
            assert_eq!(parse_env_var(bad), Err(format!("{bad:?} is not KEY=VALUE")));
        }
        assert!(parse_env_var("A=x\0y").unwrap_err().contains("NUL byte"));
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            dedup_env(pairs(&[
                ("PORT", "1"),
                ("A", "a"),
                ("PORT", "2"),
                ("B", "b")
            ])),
            pairs(&[("A", "a"), ("PORT", "2"), ("B", "b")])
        );
    }

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
