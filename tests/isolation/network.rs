//! The network side: outbound requests from the pod's namespace, slow clients and connection caps.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmhttp_tests::netns::NetNs;

/// Answers `200 ok` to each connection on `listener` until `count` connections came, counting them.
fn serve_ok(listener: std::net::TcpListener, served: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            served.fetch_add(1, Ordering::SeqCst);
            let mut head = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = std::io::Read::read(&mut stream, &mut head);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            );
        }
    });
}

#[test]
fn outbound_requests_leave_from_the_pods_network_namespace_and_resolve_with_its_files_and_dns() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "probe");
    let netns = NetNs::create("wasmhttp-iso-ns", "10.213.78", "whiso");

    // A service of the node, on its loopback: what a pod must never reach.
    let node_local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node_port = node_local.local_addr().unwrap().port();
    let node_hits = Arc::new(AtomicUsize::new(0));
    serve_ok(node_local, node_hits.clone());
    // Another pod's address (the host end of the veth stands in for it): reachable when allowed.
    let peer = std::net::TcpListener::bind(format!("{}.1:0", netns.prefix)).unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let peer_hits = Arc::new(AtomicUsize::new(0));
    serve_ok(peer, peer_hits.clone());

    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "{}.1 peer.test\n169.254.169.254 metadata.test\n",
            netns.prefix
        ),
    )
    .unwrap();
    // Cluster DNS, as the pod's resolv.conf names it: on the host end of the veth, so only a lookup made
    // from inside the pod's namespace reaches it.
    let peer_ip: std::net::Ipv4Addr = format!("{}.1", netns.prefix).parse().unwrap();
    let cluster_name = "peer.ns.svc.cluster.local";
    let asked = wasmhttp_tests::dns::serve_one_name((peer_ip, 53).into(), cluster_name, peer_ip);
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        format!("nameserver {peer_ip}\noptions timeout:2 attempts:1\n"),
    )
    .unwrap();
    let allowed = format!(
        "wasmhttp.io/allowed-outbound-hosts=127.0.0.1:{node_port},{prefix}.1:{peer_port},\
         peer.test:{peer_port},metadata.test,{cluster_name}:{peer_port}",
        prefix = netns.prefix
    );
    let mount = format!(
        "type=bind,src={},dst=/etc/hosts,options=rbind:ro",
        hosts.display()
    );
    let resolv_mount = format!(
        "type=bind,src={},dst=/etc/resolv.conf,options=rbind:ro",
        resolv_conf.display()
    );
    let network = format!("network:{}", netns.path());
    let output = ctr_run(
        &containerd,
        "-d",
        &[
            "--with-ns",
            &network,
            "--env",
            "PORT=8080",
            "--mount",
            &mount,
            "--mount",
            &resolv_mount,
            "--annotation",
            &allowed,
            &image,
            "outbound",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let service: std::net::SocketAddr = format!("{}.2:8080", netns.prefix).parse().unwrap();
    wait_for_200(service);
    let fetch = |url: &str| wasmhttp_tests::get(service, &format!("/?fetch={url}")).body;

    for _ in 0..8 {
        let body = fetch(&format!("http://127.0.0.1:{node_port}/"));
        assert!(body.starts_with("fetch denied"), "{body}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        node_hits.load(Ordering::SeqCst),
        0,
        "a pod reached the node's loopback"
    );

    let by_address = fetch(&format!("http://{}.1:{peer_port}/", netns.prefix));
    assert_eq!(by_address, "fetch allowed: 200 OK\n");
    let by_name = fetch(&format!("http://peer.test:{peer_port}/"));
    assert_eq!(
        by_name, "fetch allowed: 200 OK\n",
        "a name from the pod's /etc/hosts"
    );
    let by_cluster_dns = fetch(&format!("http://{cluster_name}:{peer_port}/"));
    assert_eq!(
        by_cluster_dns, "fetch allowed: 200 OK\n",
        "a name from the nameserver in the pod's /etc/resolv.conf"
    );
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the pod's nameserver was asked"
    );
    assert_eq!(peer_hits.load(Ordering::SeqCst), 3);
    let not_granted = fetch(&format!("http://{}.1:{}/", netns.prefix, peer_port + 1));
    assert!(not_granted.starts_with("fetch denied"), "{not_granted}");
    let metadata = fetch("http://metadata.test/");
    assert!(metadata.starts_with("fetch denied"), "{metadata}");
    containerd.wait_for_log("every address of metadata.test is in a denied range");
    kill_now(&containerd, "outbound");
}

#[test]
fn slow_clients_hold_no_slot_and_a_normal_request_is_served_at_once() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "echo");
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "slowloris",
        port,
        &[
            "--annotation",
            "wasmhttp.io/max-concurrency=16",
            "--annotation",
            "wasmhttp.io/request-timeout=3s",
        ],
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);
    // Each sends its head and 2 of the 100 bytes it announced, then nothing.
    let slow: Vec<std::net::TcpStream> = (0..256)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            std::io::Write::write_all(
                &mut stream,
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab",
            )
            .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let reply = wasmhttp_tests::get(addr, "/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal request waited {:?}",
        started.elapsed()
    );
    // A slow client is answered once the request timeout passes, and never reached the guest.
    let mut first = &slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut first, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 408");
    kill_now(&containerd, "slowloris");
}

#[test]
fn connections_past_max_connections_wait_in_the_backlog_until_one_closes() {
    use std::io::{Read, Write};
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "capped",
        port,
        &["--annotation", "wasmhttp.io/max-connections=2"],
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let answered = |stream: &mut std::net::TcpStream, within: Duration| {
        stream.set_read_timeout(Some(within)).unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
    };
    // Two kept-alive connections, each served once: the cap.
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request).unwrap();
            assert!(answered(&mut stream, Duration::from_secs(5)));
            stream
        })
        .collect();
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    third.write_all(request).unwrap();
    assert!(
        !answered(&mut third, Duration::from_millis(700)),
        "a third connection was served past max-connections 2"
    );
    held.pop();
    assert!(
        answered(&mut third, Duration::from_secs(5)),
        "served once a connection closed"
    );
    kill_now(&containerd, "capped");
}
