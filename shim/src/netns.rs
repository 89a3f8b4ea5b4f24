//! Sockets in the container's network namespace: the service's listener, and every outbound connection a
//! guest causes (with its name lookups, which use the container's own `/etc/hosts` and `/etc/resolv.conf`).
//!
//! A socket belongs to the namespace it was created in, so a short-lived thread enters the namespace, opens
//! the socket and hands it back; the shim's other threads never change namespace.

use crate::bundle::Network;
use hickory_resolver::Resolver;
use hickory_resolver::config::ResolveHosts;
use hickory_resolver::name_server::TokioConnectionProvider;
use nix::sched::{CloneFlags, setns, unshare};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;
use wasmhttp_runtime::Dialer;
use wasmhttp_runtime::outbound::connect_first;

/// The most of a hosts or resolv.conf file read: they are small, and a container names them.
const MAX_RESOLVER_FILE: u64 = 1 << 20;

/// Binds `addr` in `network`; the error says which port and namespace.
pub fn listen(addr: SocketAddr, network: &Network) -> Result<TcpListener, String> {
    let where_ = match network {
        Network::Host => "the host network".to_string(),
        Network::Namespace(path) => format!("network namespace {}", path.display()),
        Network::Fresh => "a new network namespace".to_string(),
    };
    let bound = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("wasmhttp-netns".into())
            .spawn_scoped(scope, || -> Result<TcpListener, String> {
                if let Network::Fresh = network {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot create: {e}"))?;
                } else {
                    enter(network)?;
                }
                TcpListener::bind(addr).map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot start the listener thread: {e}"))?
            .join()
            .map_err(|_| "the listener thread panicked".to_string())?
    });
    bound.map_err(|e| format!("cannot listen on {addr} in {where_}: {e}"))
}

/// Moves the calling thread into `network` (nothing to do for the host's).
fn enter(network: &Network) -> Result<(), String> {
    match network {
        Network::Host => Ok(()),
        Network::Namespace(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
            setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot enter: {e}"))
        }
        Network::Fresh => Err("a new network namespace cannot be entered again".into()),
    }
}

/// Opens a guest's outbound connections in the container's network namespace, resolving names with the
/// container's hosts and resolv.conf files (the host paths its spec mounts at `/etc/hosts` and
/// `/etc/resolv.conf`).
#[derive(Debug)]
pub struct NamespaceDialer {
    network: Network,
    hosts: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
}

impl NamespaceDialer {
    /// A dialer for `network`, with the container's resolver files where its spec mounts them.
    pub fn new(network: Network, hosts: Option<PathBuf>, resolv_conf: Option<PathBuf>) -> Self {
        NamespaceDialer {
            network,
            hosts,
            resolv_conf,
        }
    }

    fn resolve(&self, host: &str, timeout: Duration) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(path) = &self.hosts {
            let found = hosts_lookup(&read_small(path)?, host);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let Some(path) = &self.resolv_conf else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{host}: not in the container's hosts file, and it has no /etc/resolv.conf"
                ),
            ));
        };
        let (config, mut options) =
            hickory_resolver::system_conf::parse_resolv_conf(read_small(path)?)
                .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        // Never the host's hosts file: the container's was consulted above.
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = options.timeout.min(timeout);
        let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
        // The resolver's sockets are made on this thread, so in the container's namespace.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let found = runtime
            .block_on(resolver.lookup_ip(host))
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{host}: {e}")))?;
        Ok(found.iter().collect())
    }
}

impl Dialer for NamespaceDialer {
    fn dial(
        &self,
        host: &str,
        port: u16,
        permit: &(dyn Fn(IpAddr) -> bool + Sync),
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        if let Network::Fresh = self.network {
            return Err(io::Error::new(
                io::ErrorKind::NetworkUnreachable,
                "the container's new network namespace has no route out",
            ));
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("wasmhttp-dial".into())
                .spawn_scoped(scope, || {
                    enter(&self.network).map_err(io::Error::other)?;
                    let addrs = self.resolve(host, timeout)?;
                    connect_first(host, &addrs, port, permit, timeout)
                })?
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the dialling thread panicked")))
        })
    }
}

fn read_small(path: &PathBuf) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RESOLVER_FILE).read_to_string(&mut text))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(text)
}

/// The addresses `/etc/hosts` text gives `name` (names match case-insensitively).
fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('#').next()?.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_reported_with_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listen(taken.local_addr().unwrap(), &Network::Host).unwrap_err();
        assert!(
            err.contains(&taken.local_addr().unwrap().to_string()) && err.contains("in use"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = listen(
            "0.0.0.0:0".parse().unwrap(),
            &Network::Namespace("/no/such/netns".into()),
        )
        .unwrap_err();
        assert!(err.contains("/no/such/netns"), "{err}");
    }

    #[test]
    fn hosts_files_are_read_like_the_libc_resolver() {
        let text = "# comment\n127.0.0.1 localhost\n10.0.0.2  Peer.Test peer # the peer\n\nbad line\n::1 localhost\n";
        assert_eq!(
            hosts_lookup(text, "localhost"),
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(text, "peer.test"),
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(text, "comment").is_empty());
    }

    #[test]
    fn names_resolve_from_the_containers_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 service.test\n").unwrap();
        let dialer = NamespaceDialer::new(Network::Host, Some(hosts), None);
        let found = dialer
            .resolve("service.test", Duration::from_secs(1))
            .unwrap();
        assert_eq!(found, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let err = dialer
            .resolve("localhost", Duration::from_secs(1))
            .unwrap_err();
        assert!(err.to_string().contains("has no /etc/resolv.conf"), "{err}");
        let fresh = NamespaceDialer::new(Network::Fresh, None, None);
        let err = fresh
            .dial("127.0.0.1", 80, &|_| true, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NetworkUnreachable);
    }
}
