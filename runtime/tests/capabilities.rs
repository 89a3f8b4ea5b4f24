//! A guest sees nothing of the host it was not granted: no files, no outbound HTTP, no host environment.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmhttp_runtime::*;

/// A plain loopback HTTP server the probe guest tries to reach; counts the connections it gets.
fn outbound_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capabilities_files_and_network_are_denied_and_granting_them_works() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "host secret").unwrap();
    let (target, connections) = outbound_target();
    let probe = format!(
        "/?read={}/secret.txt&fetch=http://{target}/",
        dir.path().display()
    );
    let runtime = runtime();

    let denied = serve(
        &runtime,
        "probe",
        Limits::default(),
        Capabilities::default(),
    );
    let reply = get_async(denied.addr, &probe).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("read denied"), "{}", reply.body);
    assert!(reply.body.contains("fetch denied"), "{}", reply.body);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a denied request must not reach the network"
    );

    let granted = Capabilities {
        preopens: vec![Preopen {
            host: dir.path().into(),
            guest: dir.path().display().to_string(),
            read_only: true,
        }],
        allowed_outbound_hosts: vec![target.to_string()],
        ..Capabilities::default()
    };
    let allowed = serve(&runtime, "probe", Limits::default(), granted);
    let reply = get_async(allowed.addr, &probe).await;
    assert!(
        reply.body.contains("read allowed: host secret"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("fetch allowed: 200"), "{}", reply.body);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preopen_exposes_its_directory_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    let caps = Capabilities {
        preopens: vec![Preopen {
            host: dir.path().into(),
            guest: "/data".into(),
            read_only: true,
        }],
        ..Capabilities::default()
    };
    let served = serve(&runtime(), "probe", Limits::default(), caps);
    let reply = get_async(served.addr, "/?read=/data/f.txt").await;
    assert!(reply.body.contains("read allowed: x"), "{}", reply.body);
    let reply = get_async(served.addr, "/?read=/etc/hostname").await;
    assert!(
        reply.body.contains("read denied"),
        "paths outside the preopen stay hidden: {}",
        reply.body
    );
}
