//! Host memory a guest makes the shim hold for it (`wasi:http` resources) is bounded by its memory limit
//! and charged against it. Alone in its own test binary so the RSS it samples is this test's, and with
//! the charging allocator the shim installs; its tests take turns, since they share the process's RSS.

mod common;

use common::*;
use wasmhttp_runtime::*;

const MIB: u64 = 1 << 20;

/// Held by each test for its whole run: another test's services would grow the RSS one of them samples.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[global_allocator]
static ALLOCATOR: ChargingAllocator = ChargingAllocator;

/// The service's host memory once `done` holds of it, or after 5 s.
async fn host_memory_reaches(served: &Served, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let bytes = served.handle.stats().host_memory;
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
    let (replies, growth) = peak_growth(futures::future::join_all(requests)).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "some fit, the rest are refused: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        growth < limit + 16 * MIB,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_its_clients_cause_refuses_requests_before_an_instance_runs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 8 * MIB;
    let served = serve_mem_hog(&runtime(), Some(limit));
    let addr = served.addr;
    assert_eq!(get_async(addr, "/?fields=1").await.status, 200);

    // 200 clients each send 60 KiB of a 100,000-byte body and wait: the shim holds their pre-read starts,
    // charged to the service, which together fill its limit while no guest code runs.
    let head = "POST /?fields=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
    let start = vec![b'x'; 60 << 10];
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(&start).await.unwrap();
        clients.push(client);
    }
    let held = host_memory_reaches(&served, |bytes| bytes > limit).await;
    assert!(
        held > limit,
        "the clients made the shim hold only {held} bytes"
    );

    // A request now would have its instance ended at its first host call, and blamed (500): it is
    // refused before one runs, as an overload.
    let before = served.handle.stats();
    let reply = get_async(addr, "/?fields=1").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    // So is a client whose own body adds to it, once its start is read.
    let mut last = clients.pop().unwrap();
    last.write_all(&vec![b'x'; 100_000 - start.len()])
        .await
        .unwrap();
    let mut answer = vec![0; 12];
    last.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, b"HTTP/1.1 503");
    let after = served.handle.stats();
    assert_eq!(
        (
            after.instantiations - before.instantiations,
            after.failed_memory - before.failed_memory,
            after.failed_overload - before.failed_overload,
        ),
        (0, 0, 2),
        "no instance ran and nothing was blamed on the guest: {after:?}"
    );

    drop((clients, last));
    let left = host_memory_reaches(&served, |bytes| bytes <= 2 * MIB).await;
    assert!(left <= 2 * MIB, "{left} bytes still charged");
    assert_eq!(
        get_async(addr, "/?fields=1").await.status,
        200,
        "serving again"
    );
}
