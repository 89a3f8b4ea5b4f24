//! What a finished instance leaves resident in its pool slot: at most `slot_keep_resident` of the pages it
//! wrote. Alone in its test binary, and its tests take turns (`ONE_AT_A_TIME`): each measures the whole process's
//! resident memory or page faults, which another test running meanwhile would move.

mod common;

use common::*;
use std::time::Duration;
use wasmhttp_runtime::*;

/// This process's resident anonymous memory (where written linear memory lives), in bytes.
fn rss_anon() -> u64 {
    own_status_bytes("RssAnon")
}

/// A runtime of a few pool slots, each keeping up to `keep` bytes of the pages its last instance wrote.
fn keeping(keep: u64) -> Runtime {
    Runtime::new(EngineConfig {
        max_instances: 4,
        slot_keep_resident: keep,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Resident growth left behind by one finished request that wrote 48 MiB, under `keep` bytes of slot residency.
async fn left_resident(keep: u64) -> u64 {
    let runtime = keeping(keep);
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
    let _alone = ONE_AT_A_TIME.lock().await;
    let default = left_resident(EngineConfig::default().slot_keep_resident).await;
    assert!(
        default < 8 << 20,
        "the default keeps 64 KiB at most, yet {} MiB stayed resident",
        default >> 20
    );
    // The same request with a generous setting keeps what it wrote, so the check above can fail.
    let generous = left_resident(1 << 30).await;
    assert!(
        generous > 40 << 20,
        "with 1 GiB allowed the written pages stay: only {} MiB did",
        generous >> 20
    );
    // More than a slot can hold means all of it, not an engine that fails to build.
    let all = left_resident(u64::MAX).await;
    assert!(
        all > 40 << 20,
        "only {} MiB stayed with no bound",
        all >> 20
    );
}

/// Minor page faults of this whole process so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_minflt
}

/// Page faults per request of `hello` 0.2 (a fresh instance each, in a reused pool slot) under `keep`.
async fn faults_per_request(keep: u64) -> f64 {
    let runtime = keeping(keep);
    let served = serve(
        &runtime,
        "hello",
        Limits::default(),
        Capabilities::default(),
    );
    for _ in 0..20 {
        assert_eq!(get_async(served.addr, "/").await.status, 200);
    }
    const REQUESTS: i64 = 200;
    let before = minor_faults();
    for _ in 0..REQUESTS {
        assert_eq!(get_async(served.addr, "/").await.status, 200);
    }
    (minor_faults() - before) as f64 / REQUESTS as f64
}

/// The default residency keeps the few pages a small guest writes, so resetting its slot drops nothing and
/// the next instance faults nothing in. wasmtime 50.0.1's reset scan did not: on a kernel that reports
/// never-touched pages as written (this machine kind's), the budget went on those and every request
/// faulted its written pages in again (~4 a request for hello).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_default_residency_a_small_guest_faults_no_pages_in_per_request() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let kept = faults_per_request(EngineConfig::default().slot_keep_resident).await;
    // Nothing kept: every reset drops the written pages, so the test can tell the two apart.
    let dropped = faults_per_request(0).await;
    eprintln!(
        "page faults per request: {kept:.2} with the default residency, {dropped:.2} with none"
    );
    assert!(
        dropped >= 2.0,
        "with nothing kept, the written pages fault in again: {dropped:.2} a request"
    );
    assert!(
        kept < 1.0,
        "with the default residency, {kept:.2} page faults a request ({dropped:.2} with none)"
    );
}
