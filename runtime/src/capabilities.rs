//! What a guest may touch. The default is nothing: no directories, no host environment, no network.

use crate::output::InstanceOutput;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Directories the guest can open.
    pub preopens: Vec<Preopen>,
    /// Environment variables the guest sees (the host's are never inherited).
    pub env: Vec<(String, String)>,
    /// Arguments the guest sees, `args[0]` included.
    pub args: Vec<String>,
    /// Hosts (`name` or `name:port`, or `*` for any) the guest may send outbound HTTP requests to.
    pub allowed_outbound_hosts: Vec<String>,
}

impl Capabilities {
    /// Checks that every preopened directory exists, so a mistake fails at load time and not per request.
    pub fn validate(&self) -> Result<(), crate::Error> {
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
        for preopen in &self.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder.preopened_dir(&preopen.host, &preopen.guest, perms)?;
        }
        Ok(builder)
    }

    pub(crate) fn outbound_policy(&self) -> OutboundPolicy {
        OutboundPolicy {
            allowed_hosts: Arc::from(self.allowed_outbound_hosts.as_slice()),
        }
    }
}

/// `wasi:http/outgoing-handler` gate: requests go out only to the granted hosts.
#[derive(Clone)]
pub(crate) struct OutboundPolicy {
    allowed_hosts: Arc<[String]>,
}

impl OutboundPolicy {
    fn allows(&self, authority: &str) -> bool {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed == authority || allowed == host)
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if !self.allows(&authority) {
            tracing::warn!(%authority, "outbound HTTP request denied: host not granted");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_by_name_or_name_and_port() {
        let policy = Capabilities {
            allowed_outbound_hosts: vec!["api.example.com".into(), "db:5432".into()],
            ..Default::default()
        }
        .outbound_policy();
        assert!(policy.allows("api.example.com"));
        assert!(policy.allows("api.example.com:443"));
        assert!(policy.allows("db:5432"));
        assert!(!policy.allows("db:80"));
        assert!(!policy.allows("evil.example.com"));
        assert!(!Capabilities::default().outbound_policy().allows("anything"));
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
