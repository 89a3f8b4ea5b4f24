//! Host memory a guest makes the shim hold for it (`wasi:http` resources) is bounded by its memory limit
//! and charged against it. Alone in its own test binary so the RSS it samples is this test's, and with
//! the charging allocator the shim installs; its tests take turns, since they share the process's RSS.

mod common;

use common::*;
use wasmhttp_runtime::*;

const MIB: u64 = 1 << 20;

#[global_allocator]
static ALLOCATOR: ChargingAllocator = ChargingAllocator;

/// The service's host memory once `done` holds of it, or after 5 s.
async fn host_memory_reaches(served: &Served, done: impl Fn(u64) -> bool) -> u64 {
    stat_reaches(served, |stats| stats.host_memory, done).await
}

/// The service's figure `stat` once `done` holds of it, or after 5 s.
async fn stat_reaches(
    served: &Served,
    stat: impl Fn(&StatsSnapshot) -> u64,
    done: impl Fn(u64) -> bool,
) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let bytes = stat(&served.handle.stats());
        if done(bytes) || std::time::Instant::now() > deadline {
            return bytes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_held_for_a_guest_counts_against_its_memory_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let served = serve_mem_hog(&runtime(), Some(64 * MIB));
    let addr = served.addr;
    // 48 MiB of linear memory fits the limit, and so do 400 fields of 48 KiB (19 MiB) held in the host.
    assert_eq!(get_async(addr, "/?mib=48").await.status, 200);
    let reply = get_async(addr, "/?fields=400").await;
    assert_eq!(reply.body, "host holds 400 fields\n", "{reply:?}");
    // Both at once do not: the growth is refused as the guest's own.
    let reply = get_async(addr, "/?fields=400&mib=48").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.body.contains("memory limit"), "{reply:?}");
    assert_eq!(
        get_async(addr, "/?mib=48").await.status,
        200,
        "still serving"
    );
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_memory, stats.failed_overload),
        (1, 0),
        "{stats:?}"
    );

    // Linear memory first, then host memory: the host call that takes the service past its limit ends
    // the instance, where only a later growth would have noticed.
    let reply = get_async(addr, "/?mib=48&late-fields=400").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.body.contains("memory limit"), "{reply:?}");
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_memory, stats.failed_overload),
        (2, 0),
        "{stats:?}"
    );
    let left = host_memory_reaches(&served, |bytes| bytes <= 2 * MIB).await;
    assert!(left <= 2 * MIB, "{left} bytes still charged after the trap");

    // While a request holds 100 fields, the service's figure shows them; they are given back after.
    let holding = tokio::spawn(get_async(addr, "/?fields=100&mib=1&hold=1000"));
    let fields = 100 * (48 << 10);
    let shown = host_memory_reaches(&served, |bytes| bytes >= fields).await;
    assert!(
        shown >= fields,
        "{shown} bytes charged while 100 fields are held"
    );
    assert_eq!(holding.await.unwrap().status, 200);
    let left = host_memory_reaches(&served, |bytes| bytes <= 2 * MIB).await;
    assert!(left <= 2 * MIB, "{left} bytes still charged");
}

/// The host memory check does not wait for the epoch clock: the allocator brings the guest's next check
/// forward as the service passes its limit. With a clock that does not tick during the test, the request
/// whose host calls pass the limit still ends with its instance, and the service goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_the_limit_in_host_memory_is_noticed_without_waiting_for_a_tick() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let runtime = Runtime::new(EngineConfig {
        max_instances: 64,
        epoch_tick: std::time::Duration::from_secs(3600),
        ..EngineConfig::default()
    })
    .unwrap();
    let served = serve_mem_hog(&runtime, Some(64 * MIB));
    let reply = get_async(served.addr, "/?mib=48&late-fields=400").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.body.contains("memory limit"), "{reply:?}");
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_memory, stats.failed_overload),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(
        get_async(served.addr, "/?mib=48").await.status,
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_a_guest_makes_the_host_hold_are_bounded_by_its_memory_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let runtime = runtime();
    let limit = 64 * MIB;
    let limited = serve_mem_hog(&runtime, Some(limit));
    let addr = limited.addr;
    let reply = get_async(addr, "/?fields=100").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "host holds 100 fields\n")
    );

    // 20,000 header maps of 48 KiB would be ~940 MiB of the host's memory.
    let (reply, growth) = peak_growth(get_async(addr, "/?fields=20000")).await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        growth < limit + 16 * MIB,
        "the host grew {} MiB for a guest limited to 64 MiB",
        growth / MIB
    );
    assert_eq!(
        get_async(addr, "/?fields=100").await.status,
        200,
        "still serving"
    );

    // With a larger limit the same guest does make the host hold more: the measurement above can fail.
    let roomy = serve_mem_hog(&runtime, Some(1024 * MIB));
    let (reply, growth) = peak_growth(get_async(roomy.addr, "/?fields=6000")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        growth > 200 * MIB,
        "6,000 fields of 48 KiB grew the host by only {} MiB",
        growth / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_share_one_memory_limit_for_the_host_memory_they_make_the_shim_hold() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 64 * MIB;
    let served = serve_mem_hog(&runtime(), Some(limit));
    let addr = served.addr;
    // Each holds 400 fields (19 MiB) for a second with no linear growth: within its own resource bound,
    // but 8 of them at once would make the host hold 150 MiB for a service limited to 64 MiB. Each would
    // fit alone, so the ones that do not fit beside the others get a retryable 503.
    let requests = (0..8).map(|_| get_async(addr, "/?fields=400&mib=0&hold=1000"));
    let ((replies, growth), charged) =
        peak_charge(&served, peak_growth(futures::future::join_all(requests))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "some fit, the rest are refused: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    // The charge is exact up to what threads have not yet published. The process's growth is looser:
    // glibc keeps what one worker thread's arena freed (a refused request's maps) for that thread, so
    // RSS can pass the charge by what the refused requests held in another arena.
    assert!(
        charged <= limit + MIB,
        "{} MiB charged to a service limited to 64 MiB",
        charged / MIB
    );
    assert!(
        growth < limit + 32 * MIB,
        "the host grew {} MiB for a guest limited to 64 MiB",
        growth / MIB
    );
    let left = host_memory_reaches(&served, |bytes| bytes <= 2 * MIB).await;
    assert!(left <= 2 * MIB, "{left} bytes still charged");
    assert_eq!(
        get_async(addr, "/?fields=100").await.status,
        200,
        "still serving"
    );
}

/// `work`'s output and the most the service was charged (linear and host memory) while it ran, sampled
/// every millisecond.
async fn peak_charge<F: std::future::Future>(served: &Served, work: F) -> (F::Output, u64) {
    let peak = std::cell::Cell::new(0);
    let sample = async {
        loop {
            let stats = served.handle.stats();
            peak.set(peak.get().max(stats.memory_current + stats.host_memory));
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let output = match futures::future::select(std::pin::pin!(work), std::pin::pin!(sample)).await {
        futures::future::Either::Left((output, _)) => output,
        futures::future::Either::Right((never, _)) => never,
    };
    (output, peak.get())
}

/// Clients that each send 60 KiB of a 100,000-byte body and then wait, holding their pre-read starts.
async fn clients_holding_bodies(
    addr: std::net::SocketAddr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut sent =
        b"POST /?fields=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n".to_vec();
    sent.resize(sent.len() + (60 << 10), b'x');
    clients_sending(addr, count, &sent).await
}

/// `count` clients that each send `sent` and then wait.
async fn clients_sending(
    addr: std::net::SocketAddr,
    count: usize,
    sent: &[u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A client refused while it sends may find the connection closed: that is the point.
        let _ = client.write_all(sent).await;
        clients.push(client);
    }
    clients
}

/// The service's host memory once it has not changed for 200 ms (or after 5 s).
async fn settled_host_memory(served: &Served) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = served.handle.stats().host_memory;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = served.handle.stats().host_memory;
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_its_clients_cause_is_refused_to_them_and_never_blamed_on_an_instance() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 8 * MIB;
    let served = serve_mem_hog(&runtime(), Some(limit));
    let addr = served.addr;
    assert_eq!(get_async(addr, "/?fields=1").await.status, 200);

    // Clients until they hold over 4.5 MiB of the 8 (each costs its body's start and hyper's buffers). A
    // request whose 4 MiB would fit the limit alone does not fit beside them: a retryable 503, not the
    // guest's fault.
    let mut some = Vec::new();
    while served.handle.stats().host_memory < 9 * MIB / 2 && some.len() < 100 {
        some.extend(clients_holding_bodies(addr, 1).await);
        host_memory_reaches(&served, |bytes| bytes >= some.len() as u64 * (60 << 10)).await;
    }
    let held = served.handle.stats().host_memory;
    assert!(
        held < 7 * MIB,
        "{} clients made the shim hold {held} bytes",
        some.len()
    );
    let reply = get_async(addr, "/?mib=4").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_memory, stats.failed_overload),
        (0, 1),
        "{stats:?}"
    );

    // 100 more: once the limit is full, the rest wait in the kernel (their connections read nothing,
    // new ones stay in the backlog) or are refused (503) as they send, and what they sent is freed.
    let more = clients_holding_bodies(addr, 100).await;
    let held = settled_host_memory(&served).await;
    assert!(
        held <= limit + MIB,
        "the clients made the shim hold {} MiB for a service limited to 8",
        held / MIB
    );
    assert_eq!(served.handle.stats().failed_memory, 0);

    // Closed clients still in the backlog are accepted and read once memory frees, each charged until
    // its body ends short: the figure must settle, not only dip, before the limit has room again.
    drop((some, more));
    host_memory_reaches(&served, |bytes| bytes <= 2 * MIB).await;
    let left = settled_host_memory(&served).await;
    assert!(left <= 2 * MIB, "{left} bytes still charged");
    assert_eq!(
        get_async(addr, "/?mib=4").await.status,
        200,
        "serving again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_part_of_a_head_wait_in_the_kernel_once_they_fill_the_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 8 * MIB;
    let served = serve_mem_hog(&runtime(), Some(limit));
    let addr = served.addr;
    // 160 clients each send 60 KiB of a head and stop: read, each would hold a 64 KiB buffer in the shim
    // (19 MiB in all, measured) until the header read timeout. Past the limit, they wait unread.
    let mut head = b"GET /?fields=1 HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    head.resize(60 << 10, b'a');
    let clients = clients_sending(addr, 160, &head).await;
    let held = settled_host_memory(&served).await;
    assert!(
        held <= limit + MIB,
        "160 partial heads made the shim hold {} MiB for a service limited to 8",
        held / MIB
    );
    assert!(
        held >= limit / 2,
        "only {held} bytes charged: heads unread?"
    );

    // A client that comes now waits in the backlog, not refused, and is served once the others leave.
    let waiting = tokio::spawn(get_async(addr, "/?fields=1"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past a full limit");
    drop(clients);
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("still waiting 5 s after the others left")
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_memory, stats.failed_overload),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_while_instances_and_clients_fill_the_limit_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 8 * MIB;
    let served = serve_mem_hog(&runtime(), Some(limit));
    let addr = served.addr;
    // An instance holds 6 MiB for 5 s. Its clients are still read up to a quarter of the limit, more
    // than the instance leaves: a body that arrives while both exceed the limit gets 503 and is freed.
    let holding = tokio::spawn(get_async(addr, "/?mib=6&hold=5000"));
    stat_reaches(
        &served,
        |stats| stats.memory_current,
        |bytes| bytes >= 6 * MIB,
    )
    .await;
    let clients = clients_holding_bodies(addr, 40).await;
    let held = settled_host_memory(&served).await;
    let stats = served.handle.stats();
    assert!(stats.failed_overload >= 1, "no body refused: {stats:?}");
    assert_eq!(stats.failed_memory, 0, "{stats:?}");
    assert!(
        held <= limit / 4 + MIB,
        "the clients made the shim hold {} KiB beside the instance",
        held >> 10
    );
    assert_eq!(
        holding.await.unwrap().status,
        200,
        "the instance is not blamed"
    );
    drop(clients);
}
