//! Host memory a guest makes the shim hold for it (`wasi:http` resources) is bounded by its memory limit.
//! Alone in its own test binary so the RSS it samples is this test's.

mod common;

use common::*;
use wasmhttp_runtime::*;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_a_guest_makes_the_host_hold_are_bounded_by_its_memory_limit() {
    let runtime = runtime();
    let limit = 64 * MIB;
    let limited = serve(
        &runtime,
        "mem-hog",
        Limits {
            memory: Some(limit),
            ..Limits::default()
        },
        Capabilities::default(),
    );
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
    let roomy = serve(
        &runtime,
        "mem-hog",
        Limits {
            memory: Some(1024 * MIB),
            ..Limits::default()
        },
        Capabilities::default(),
    );
    let (reply, growth) = peak_growth(get_async(roomy.addr, "/?fields=6000")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        growth > 200 * MIB,
        "6,000 fields of 48 KiB grew the host by only {} MiB",
        growth / MIB
    );
}
