//! The memory limit holds inside the engine: over-limit requests get 500 and the process does not grow past
//! the limit. Alone in its own test binary so the RSS it samples is this test's.

mod common;

use common::*;
use wasmhttp_runtime::*;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_gives_500_and_bounds_the_process() {
    let runtime = runtime();
    let limit = 64 * MIB;
    let limited = serve_mem_hog(&runtime, Some(limit));
    let addr = limited.addr;
    assert_eq!(
        get_async(addr, "/?mib=16").await.status,
        200,
        "under the limit"
    );

    let (reply, growth) = peak_growth(get_async(addr, "/?mib=100")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "memory limit exceeded\n"),
        "{reply:?}"
    );
    assert!(
        growth < limit + 8 * MIB,
        "process grew {} MiB with a 64 MiB limit",
        growth / MIB
    );

    // Concurrent requests share the one total: together they never hold more than the limit.
    let (replies, growth) = peak_growth(async {
        let tasks: Vec<_> = (0..10)
            // Each holds its 20 MiB for a while, so they overlap however the host schedules them.
            .map(|_| tokio::spawn(get_async(addr, "/?mib=20&hold=300")))
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap().status);
        }
        statuses
    })
    .await;
    // Each would fit alone, so the ones that do not fit beside the others get a retryable 503.
    assert!(
        replies.iter().all(|s| *s == 200 || *s == 503),
        "{replies:?}"
    );
    assert!(replies.contains(&200), "{replies:?}");
    assert!(
        replies.contains(&503),
        "10 × 20 MiB cannot all fit in 64 MiB: {replies:?}"
    );
    assert!(
        growth < limit + 8 * MIB,
        "concurrent requests grew the process by {} MiB",
        growth / MIB
    );
    let stats = limited.handle.stats();
    assert!(
        stats.memory_peak <= limit,
        "peak linear memory {} over the limit",
        stats.memory_peak
    );
    assert!(stats.failed_memory >= 1, "{stats:?}");
    assert!(stats.failed_overload >= 1, "{stats:?}");
    assert_eq!(
        get_async(addr, "/?mib=16").await.status,
        200,
        "still serving after the limit was hit"
    );

    // The same request without a limit really does grow the process: the measurement above can fail.
    let unlimited = serve_mem_hog(&runtime, None);
    let (reply, growth) = peak_growth(get_async(unlimited.addr, "/?mib=100")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        growth > 90 * MIB,
        "an unlimited 100 MiB request grew the process by only {} MiB",
        growth / MIB
    );
}

/// A limit below the memory the guest starts with would fail every request: it is refused at start, in one
/// line that names both sizes.
#[test]
fn a_limit_below_the_guests_initial_memory_is_refused_at_start() {
    let runtime = runtime();
    let app = runtime.load(&example("hello")).unwrap();
    let tiny = Limits {
        memory: Some(64 << 10),
        ..Limits::default()
    };
    let err = Service::new(
        &runtime,
        &app,
        tiny.clone(),
        Capabilities::default(),
        GuestOutput::discard(),
        GuestOutput::discard(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("cannot start under these limits")
            && err.contains("starts at")
            && err.contains("the memory limit is 64Ki"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    let command = runtime.load(&example("hello-cli")).unwrap();
    assert!(command.check_memory_minimum(&tiny).is_err());
    assert!(app.check_memory_minimum(&Limits::default()).is_ok());
}
