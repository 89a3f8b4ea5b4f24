//! Outbound HTTP from guests (`wasi:http/outgoing-handler` and its 0.3 successor): policy here, mechanism
//! from the embedder.
//!
//! The runtime decides *whether* a request may go out: its host must be granted, and every address it is
//! sent to must lie outside the denied ranges (checked after name resolution, so a name cannot rebind into
//! a denied range). The embedder's [`Dialer`] decides *where* the name is resolved and the socket opened: the
//! shim opens it in the container's network namespace with the container's resolver files; the CLI uses the
//! host's. The HTTP exchange itself (TLS, HTTP/1.1) runs on the serving worker.

use crate::cpu::{ClockId, CpuMeter, cpu_clock};
use crate::metered::Metered;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// How long a connection may take when the guest sets no `connect-timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the response head may take when the guest sets no `first-byte-timeout`.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a guest's outbound TCP connections. Implementations block; the runtime calls them off its workers.
pub trait Dialer: Send + Sync + 'static {
    /// Resolves `host` (a name or an IP literal), keeps the addresses `permit` accepts and connects to
    /// `port` on the first that answers, within `timeout` per attempt. An error of kind
    /// `PermissionDenied` means `permit` refused every address; `NotFound`, that the name did not resolve.
    fn dial(
        &self,
        host: &str,
        port: u16,
        permit: &(dyn Fn(IpAddr) -> bool + Sync),
        timeout: Duration,
    ) -> io::Result<TcpStream>;
}

/// The host's own network and resolver: what `wasmhttp run` uses, and the default.
#[derive(Debug, Default)]
pub struct HostDialer;

impl Dialer for HostDialer {
    fn dial(
        &self,
        host: &str,
        port: u16,
        permit: &(dyn Fn(IpAddr) -> bool + Sync),
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let addrs: Vec<IpAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{host}: {e}")))?
            .map(|a| a.ip())
            .collect();
        connect_first(host, &addrs, port, permit, timeout)
    }
}

/// Connects to `port` on the first of `addrs` that `permit` accepts and that answers: the part of
/// [`Dialer::dial`] after resolution, for implementations to share.
pub fn connect_first(
    host: &str,
    addrs: &[IpAddr],
    port: u16,
    permit: &(dyn Fn(IpAddr) -> bool + Sync),
    timeout: Duration,
) -> io::Result<TcpStream> {
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    let permitted: Vec<IpAddr> = addrs.iter().copied().filter(|ip| permit(*ip)).collect();
    if permitted.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("every address of {host} is in a denied range"),
        ));
    }
    let mut last = None;
    for ip in permitted {
        match TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one address was tried"))
}

/// A shared [`Dialer`], comparable by identity so [`crate::Capabilities`] stays comparable.
#[derive(Clone)]
pub struct SharedDialer(pub Arc<dyn Dialer>);

impl Default for SharedDialer {
    fn default() -> Self {
        SharedDialer(Arc::new(HostDialer))
    }
}

impl fmt::Debug for SharedDialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedDialer")
    }
}

impl PartialEq for SharedDialer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedDialer {}

/// An address range (`169.254.0.0/16`, `fe80::/10`, or one address) that outbound requests may not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address range such as 169.254.0.0/16"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?
        };
        Ok(IpRange { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The ranges denied when the node names none: link-local addresses, where cloud metadata services
/// (169.254.169.254, fd00:ec2::254) answer with the node's credentials.
pub fn default_denied_ranges() -> Vec<IpRange> {
    ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
        .iter()
        .map(|r| r.parse().expect("valid built-in range"))
        .collect()
}

/// The gate and sender of one instance's outbound requests.
#[derive(Clone)]
pub(crate) struct OutboundPolicy {
    pub(crate) allowed_hosts: Arc<[String]>,
    pub(crate) denied: Arc<[IpRange]>,
    pub(crate) dialer: SharedDialer,
    /// The instance's service: the exchange (TLS included) and the connection are its CPU, held to its
    /// quota.
    pub(crate) meter: Arc<CpuMeter>,
    /// The trace context of the request the instance serves, added to outgoing requests that carry none.
    pub(crate) traceparent: Option<http::HeaderValue>,
}

impl OutboundPolicy {
    /// Whether `authority` is granted: by a grant of its host, of its host and port, or of `*`. Names are
    /// compared without regard to case, as DNS does; grants are lower-case ([`crate::parse_allowed_host`]).
    pub(crate) fn allows(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let authority = authority.as_str();
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed == authority || allowed == host)
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
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
        if let Some(traceparent) = &self.traceparent
            && !request.headers().contains_key("traceparent")
        {
            request
                .headers_mut()
                .insert("traceparent", traceparent.clone());
        }
        let meter = self.meter.clone();
        Box::new(Metered::throttled(
            send(request, options, self.clone()),
            meter,
        ))
    }
}

async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: OutboundPolicy,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let uri = request.uri().clone();
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri
        .host()
        .ok_or(HttpError::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);

    let (dialer, denied, name) = (policy.dialer.clone(), policy.denied.clone(), host.clone());
    let meter = policy.meter.clone();
    let dialed = tokio::task::spawn_blocking(move || {
        let permit = |ip: IpAddr| !denied.iter().any(|range| range.contains(ip));
        // Name lookups and connects run on a blocking thread: its CPU clock says what they cost.
        let before = cpu_clock(ClockId::ThreadCPUTime);
        let dialed = dialer.0.dial(&name, port, &permit, connect_timeout);
        meter.charge(
            cpu_clock(ClockId::ThreadCPUTime).saturating_sub(before),
            Instant::now(),
        );
        dialed
    })
    .await
    .map_err(|_| HttpError::ConnectionTerminated)?;
    let stream = dialed.map_err(|e| {
        tracing::warn!(%host, port, "outbound HTTP request failed to connect: {e}");
        dial_error(e)
    })?;
    stream.set_nonblocking(true).map_err(HttpError::Connect)?;
    let stream = tokio::net::TcpStream::from_std(stream).map_err(HttpError::Connect)?;

    let handshake = async {
        if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(HttpError::InvalidDnsNameError)?;
            let stream = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, stream)
                .await
                .map_err(HttpError::Tls)?;
            hyper::client::conn::http1::handshake(TokioIo::new(Box::new(stream) as Box<dyn Stream>))
                .await
                .map_err(HttpError::from)
        } else {
            hyper::client::conn::http1::handshake(TokioIo::new(Box::new(stream) as Box<dyn Stream>))
                .await
                .map_err(HttpError::from)
        }
    };
    let (mut sender, connection) = tokio::time::timeout(connect_timeout, handshake)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(Metered::throttled(
        async move {
            let _ = ended_tx.send(connection.await);
        },
        policy.meter.clone(),
    ));

    // The request line carries the path only; scheme and authority are for proxies.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
    let io: IoFuture = Box::new(async move {
        match ended_rx.await {
            Ok(Err(e)) => Err(HttpError::from(e)),
            Ok(Ok(())) | Err(_) => Ok(()),
        }
    });
    Ok((response, io))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

fn dial_error(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => HttpError::DestinationIpProhibited,
        io::ErrorKind::NotFound => HttpError::DestinationNotFound,
        io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
        io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            HttpError::DestinationUnavailable
        }
        _ => HttpError::Connect(e),
    }
}

/// The TLS client settings: the Mozilla roots (webpki-roots), ring, TLS 1.2 and 1.3.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_by_name_or_name_and_port() {
        let policy = OutboundPolicy {
            allowed_hosts: Arc::from(["api.example.com".to_string(), "db:5432".to_string()]),
            denied: Arc::from([]),
            dialer: SharedDialer::default(),
            meter: Arc::new(CpuMeter::new(Arc::default(), None, None)),
            traceparent: None,
        };
        assert!(policy.allows("api.example.com"));
        assert!(policy.allows("api.example.com:443"));
        assert!(policy.allows("db:5432"));
        assert!(!policy.allows("db:80"));
        assert!(!policy.allows("evil.example.com"));
        assert!(
            policy.allows("API.example.COM:443"),
            "names are not case-sensitive"
        );
    }

    #[test]
    fn ranges_parse_and_contain() {
        let metadata: IpRange = "169.254.0.0/16".parse().unwrap();
        assert!(metadata.contains("169.254.169.254".parse().unwrap()));
        assert!(
            metadata.contains("::ffff:169.254.169.254".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!metadata.contains("169.255.0.1".parse().unwrap()));
        assert!(!metadata.contains("fe80::1".parse().unwrap()));
        let one: IpRange = "10.0.0.7".parse().unwrap();
        assert!(
            one.contains("10.0.0.7".parse().unwrap()) && !one.contains("10.0.0.8".parse().unwrap())
        );
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(
            default_denied_ranges()
                .iter()
                .any(|r| r.contains("fe80::1".parse().unwrap()))
        );
        assert!(
            "10.0.0.0/33"
                .parse::<IpRange>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            "metadata"
                .parse::<IpRange>()
                .unwrap_err()
                .contains("not an address range")
        );
        assert_eq!(metadata.to_string(), "169.254.0.0/16");
    }

    #[test]
    fn a_denied_address_is_never_dialled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let loopback: IpRange = "127.0.0.0/8".parse().unwrap();
        let err = HostDialer
            .dial(
                "127.0.0.1",
                port,
                &|ip| !loopback.contains(ip),
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "no connection was made");
        assert!(
            HostDialer
                .dial("127.0.0.1", port, &|_| true, Duration::from_secs(1))
                .is_ok()
        );
    }
}
