//! What a finished instance leaves resident in its pool slot: at most `slot_keep_resident` of the pages it
//! wrote. Alone in its test binary, so no other test moves this process's resident memory.

mod common;

use common::*;
use std::time::Duration;
use wasmhttp_runtime::*;

/// This process's resident anonymous memory (where written linear memory lives), in bytes.
fn rss_anon() -> u64 {
    own_status_bytes("RssAnon")
}

/// Resident growth left behind by one finished request that wrote 48 MiB, under `keep` bytes of slot residency.
async fn left_resident(keep: Option<u64>) -> u64 {
    let runtime = Runtime::new(EngineConfig {
        max_instances: 4,
        slot_keep_resident: keep,
        ..EngineConfig::default()
    })
    .unwrap();
    let served = serve_mem_hog(&runtime, None);
    // Warm up: code, the worker thread and its buffers become resident before the baseline is taken.
    for _ in 0..3 {
        assert_eq!(get_async(served.addr, "/?mib=1").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_anon();
    let reply = get_async(served.addr, "/?mib=48").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // The slot is reset when the instance's store drops, right after the response.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(served.handle.stats().instances_live, 0);
    rss_anon().saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_keeps_at_most_its_configured_share_of_the_pages_an_instance_wrote() {
    let default = left_resident(None).await;
    assert!(
        default < 8 << 20,
        "the default keeps 64 KiB at most, yet {} MiB stayed resident",
        default >> 20
    );
    // The same request with a generous setting keeps what it wrote, so the check above can fail.
    let generous = left_resident(Some(1 << 30)).await;
    assert!(
        generous > 40 << 20,
        "with 1 GiB allowed the written pages stay: only {} MiB did",
        generous >> 20
    );
}

#[test]
fn unset_residency_follows_the_kernels_page_scan_and_a_set_one_is_used_as_given() {
    let unset = EngineConfig::default();
    assert_eq!(unset.slot_keep_resident, None);
    let expected = if pagemap::reports_untouched_as_written() {
        0
    } else {
        64 << 10
    };
    assert_eq!(unset.slot_keep_resident_bytes(), expected);
    let set = EngineConfig {
        slot_keep_resident: Some(1 << 20),
        ..EngineConfig::default()
    };
    assert_eq!(set.slot_keep_resident_bytes(), 1 << 20);
}
