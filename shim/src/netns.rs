//! Creating a service's listening socket inside the container's network namespace.
//!
//! A socket belongs to the namespace it was created in, so a short-lived thread enters the namespace,
//! binds, and hands the socket back; the shim's other threads never change namespace.

use crate::bundle::Network;
use nix::sched::{CloneFlags, setns, unshare};
use std::net::{SocketAddr, TcpListener};

/// Binds `addr` in `network`; the error says which port and namespace.
pub fn listen(addr: SocketAddr, network: &Network) -> Result<TcpListener, String> {
    let network = network.clone();
    let where_ = match &network {
        Network::Host => "the host network".to_string(),
        Network::Namespace(path) => format!("network namespace {}", path.display()),
        Network::Fresh => "a new network namespace".to_string(),
    };
    let bound = std::thread::Builder::new()
        .name("wasmhttp-netns".into())
        .spawn(move || -> Result<TcpListener, String> {
            match &network {
                Network::Host => {}
                Network::Namespace(path) => {
                    let file =
                        std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
                    setns(file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("cannot enter: {e}"))?;
                }
                Network::Fresh => {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot create: {e}"))?
                }
            }
            TcpListener::bind(addr).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("cannot start the listener thread: {e}"))?
        .join()
        .map_err(|_| "the listener thread panicked".to_string())?;
    bound.map_err(|e| format!("cannot listen on {addr} in {where_}: {e}"))
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
}
