//! WASI 0.3 services and commands, and instance reuse under the limits: every test serves a real guest over
//! loopback. One HTTP worker, so sequential requests land on the same instance when it is reused.

mod common;

use common::*;
use std::time::{Duration, Instant};
use wasmhttp_runtime::*;

fn one_worker() -> Runtime {
    Runtime::new(EngineConfig {
        max_instances: 64,
        http_workers: 1,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn counter(limits: Limits) -> Served {
    serve(&one_worker(), "counter-p3", limits, Capabilities::default())
}

/// `count: N` of a counter-p3 reply.
fn count(reply: &Reply) -> u64 {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
        .body
        .trim()
        .strip_prefix("count: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count: {reply:?}"))
}

/// Sends every target at once, each on its own connection; replies in the order given.
async fn all_at_once(served: &Served, targets: &[&'static str]) -> Vec<Reply> {
    all_at_once_owned(served.addr, targets.to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_echo_for_wasi_03_are_classified_and_served() {
    let runtime = one_worker();
    let app = runtime.load(&example("hello-p3")).unwrap();
    assert_eq!(
        (app.kind(), app.wasi(), app.is_concurrent()),
        (WasmKind::HttpService, WasiVersion::P3, true)
    );
    let plain = runtime.load(&example("hello")).unwrap();
    assert_eq!(
        (plain.wasi(), plain.is_concurrent()),
        (WasiVersion::P2, false),
        "0.2 guests stay on the engine without the async ABI"
    );
    let served = serve(
        &runtime,
        "hello-p3",
        Limits::default(),
        Capabilities::default(),
    );
    let reply = get_async(served.addr, "/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello from wasmhttp!\n")
    );

    let body = b"some body";
    let p3 = serve(
        &runtime,
        "echo-p3",
        Limits::default(),
        Capabilities::default(),
    );
    let p2 = serve(&runtime, "echo", Limits::default(), Capabilities::default());
    let (a, b) = (p3.addr, p2.addr);
    let (from_p3, from_p2) = tokio::task::spawn_blocking(move || {
        (
            request(a, "POST", "/path?q=1", "X-Test: yes\r\n", body),
            request(b, "POST", "/path?q=1", "X-Test: yes\r\n", body),
        )
    })
    .await
    .unwrap();
    assert_eq!(from_p3.status, 200, "{from_p3:?}");
    assert_eq!(
        from_p3.body, from_p2.body,
        "echo-p3 answers as the 0.2 echo does"
    );
    assert!(from_p3.body.ends_with("body: some body"), "{from_p3:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_reused_up_to_its_limit_then_replaced() {
    let served = counter(Limits {
        max_instance_reuse: Some(3),
        ..Limits::default()
    });
    let mut counts = Vec::new();
    for _ in 0..5 {
        counts.push(count(&get_async(served.addr, "/").await));
    }
    assert_eq!(counts, [1, 2, 3, 1, 2], "three requests per instance");
    assert_eq!(served.handle.stats().instantiations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_dropped_after_its_timeout() {
    let served = counter(Limits {
        idle_instance_timeout: Some(Duration::from_millis(200)),
        ..Limits::default()
    });
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(count(&get_async(served.addr, "/").await), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = served.handle.stats();
    assert_eq!(
        (stats.instances_live, stats.memory_current),
        (0, 0),
        "the idle instance and its memory are gone"
    );
    assert_eq!(count(&get_async(served.addr, "/").await), 1, "a fresh one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_an_instance_concurrently_up_to_its_limit() {
    let served = counter(Limits::default());
    let replies = all_at_once(&served, &["/sleep/600"; 6]).await;
    let mut counts: Vec<u64> = replies.iter().map(count).collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3, 4, 5, 6], "one instance took all six");
    assert_eq!(served.handle.stats().instantiations, 1);

    let one_at_a_time = counter(Limits {
        max_instance_concurrency: Some(1),
        ..Limits::default()
    });
    let replies = all_at_once(&one_at_a_time, &["/sleep/300"; 4]).await;
    assert!(replies.iter().all(|r| count(r) == 1), "{replies:?}");
    assert_eq!(one_at_a_time.handle.stats().instantiations, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_counts_requests_not_instances() {
    let served = counter(Limits {
        max_concurrency: Some(2),
        queue_depth: Some(0),
        ..Limits::default()
    });
    let waiting = tokio::spawn(all_at_once_owned(served.addr, vec!["/sleep/800"; 2]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served.handle.stats().in_flight, 2);
    let refused = get_async(served.addr, "/").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(waiting.await.unwrap().iter().all(|r| r.status == 200));
    assert_eq!(served.handle.stats().instantiations, 1);
}

async fn all_at_once_owned(addr: std::net::SocketAddr, targets: Vec<&'static str>) -> Vec<Reply> {
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| tokio::spawn(get_async(addr, t)))
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_past_the_limit_ends_the_instance_and_its_requests_then_a_fresh_one_serves() {
    let served = counter(Limits {
        memory: Some(24 << 20),
        ..Limits::default()
    });
    assert_eq!(count(&get_async(served.addr, "/alloc/8").await), 1);
    let sleeper = tokio::spawn(get_async(served.addr, "/sleep/1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grower = get_async(served.addr, "/alloc/32").await;
    assert_eq!(grower.status, 500, "{grower:?}");
    assert!(grower.body.contains("memory limit"), "{grower:?}");
    let sleeper = sleeper.await.unwrap();
    assert_eq!(
        sleeper.status, 500,
        "its neighbour went with the instance: {sleeper:?}"
    );
    assert_eq!(
        count(&get_async(served.addr, "/").await),
        1,
        "a fresh instance"
    );
    let stats = served.handle.stats();
    assert_eq!(stats.failed_memory, 2, "{stats:?}");
    assert!(stats.memory_peak <= 24 << 20, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_ends_the_instance_and_every_request_on_it_gets_500() {
    let served = counter(Limits::default());
    let sleeper = tokio::spawn(get_async(served.addr, "/sleep/1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_async(served.addr, "/trap").await.status, 500);
    assert_eq!(sleeper.await.unwrap().status, 500);
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(served.handle.stats().failed_trap, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_past_its_deadline_gets_504_alone() {
    let served = counter(Limits {
        request_timeout: Some(Duration::from_millis(500)),
        ..Limits::default()
    });
    let late = tokio::spawn(get_async(served.addr, "/sleep/3000"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let neighbour = get_async(served.addr, "/sleep/100").await;
    assert_eq!(count(&neighbour), 2, "served by the same instance");
    let late = late.await.unwrap();
    assert_eq!(late.status, 504, "{late:?}");
    // Its task may still run, so the instance takes no new requests: a fresh one does.
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(served.handle.stats().failed_timeout, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computing_request_past_its_deadline_ends_the_instance_with_its_neighbours() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let served = counter(Limits {
        request_timeout: Some(Duration::from_millis(400)),
        ..Limits::default()
    });
    let neighbour = tokio::spawn(get_async(served.addr, "/sleep/300"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spinner = get_async(served.addr, "/spin").await;
    assert_eq!(spinner.status, 504, "{spinner:?}");
    assert_eq!(
        neighbour.await.unwrap().status,
        504,
        "a spinning task holds up the store's other tasks until the instance is interrupted"
    );
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_is_granted_per_request_on_a_reused_instance() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let served = counter(Limits {
        fuel_per_request: Some(20_000_000),
        ..Limits::default()
    });
    for expected in 1..=3 {
        assert_eq!(
            count(&get_async(served.addr, "/").await),
            expected,
            "cheap requests never run out, however many the instance serves"
        );
    }
    let spinner = get_async(served.addr, "/spin").await;
    assert_eq!(spinner.status, 500, "{spinner:?}");
    assert!(spinner.body.contains("fuel"), "{spinner:?}");
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(served.handle.stats().failed_fuel, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_quota_holds_with_concurrent_requests_in_one_store() {
    // The other tests that keep a core busy wait, so the quota is measured on this service alone.
    let _alone = ONE_AT_A_TIME.lock().await;
    let served = counter(Limits {
        cpus: Some(0.5),
        ..Limits::default()
    });
    let started = Instant::now();
    let replies = all_at_once(&served, &["/burn/1500"; 3]).await;
    let wall = started.elapsed();
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let stats = served.handle.stats();
    assert_eq!(stats.instantiations, 1, "{stats:?}");
    let rate = stats.cpu_time.as_secs_f64() / wall.as_secs_f64();
    assert!(
        (0.45..=0.55).contains(&rate),
        "{:?} of CPU in {wall:?}: {rate:.2} cores against a quota of 0.5",
        stats.cpu_time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_sends_new_requests_to_a_fresh_instance() {
    let served = counter(Limits::default());
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(count(&get_async(served.addr, "/").await), 2);
    served.handle.update_limits(Limits {
        memory: Some(64 << 20),
        ..Limits::default()
    });
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(served.handle.limits().memory, Some(64 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_02_service_reuses_instances_serially_only_when_asked() {
    let fresh = serve(
        &one_worker(),
        "hello",
        Limits::default(),
        Capabilities::default(),
    );
    for _ in 0..3 {
        assert_eq!(get_async(fresh.addr, "/").await.status, 200);
    }
    assert_eq!(
        fresh.handle.stats().instantiations,
        3,
        "one instance per request by default"
    );

    let reused = serve(
        &one_worker(),
        "hello",
        Limits {
            max_instance_reuse: Some(10),
            ..Limits::default()
        },
        Capabilities::default(),
    );
    for _ in 0..3 {
        let reply = get_async(reused.addr, "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "Hello from wasmhttp!\n")
        );
    }
    let stats = reused.handle.stats();
    assert_eq!((stats.instantiations, stats.requests_served), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_service_leaves_no_instance_behind() {
    let served = counter(Limits::default());
    assert_eq!(count(&get_async(served.addr, "/").await), 1);
    assert_eq!(served.handle.stats().instances_live, 1, "kept for reuse");
    served.handle.shutdown(Duration::from_secs(2)).await;
    let stats = served.handle.stats();
    assert_eq!((stats.instances_live, stats.memory_current), (0, 0));
}

#[tokio::test]
async fn a_wasi_03_command_runs_with_its_exit_status() {
    let runtime = one_worker();
    let app = runtime.load(&example("hello-cli-p3")).unwrap();
    assert_eq!(
        (app.kind(), app.wasi()),
        (WasmKind::Command, WasiVersion::P3)
    );
    for (args, code) in [(vec!["hello", "world"], 0), (vec!["hello", "fail"], 1)] {
        let stdout = Capture::default();
        let io = CommandIo {
            stdout: stdout.output(),
            ..CommandIo::default()
        };
        let caps = Capabilities {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Capabilities::default()
        };
        let exit = run_command(&runtime, &app, &Limits::default(), &caps, io)
            .await
            .unwrap();
        assert_eq!(exit.code, code);
        assert_eq!(stdout.text(), format!("arg[0]=hello\narg[1]={}\n", args[1]));
    }
}

#[test]
fn a_component_exporting_nothing_runnable_is_named_with_what_is_supported() {
    let empty = wat::parse_str("(component)").unwrap();
    let err = one_worker()
        .load(&Source::from_bytes("empty.wasm", empty))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "empty.wasm exports nothing; wasmhttp runs wasi:http/incoming-handler@0.2.x, \
         wasi:http/handler@0.3.x (HTTP services), wasi:cli/run@0.2.x, wasi:cli/run@0.3.x (commands) \
         and WASI preview 1 modules exporting _start"
    );
}

#[test]
fn a_wasi_03_guest_is_cached_under_its_own_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        max_instances: 8,
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineConfig::default()
    };
    let first = Runtime::new(config.clone()).unwrap();
    assert!(!first.load(&example("hello-p3")).unwrap().from_cache());
    assert!(!first.load(&example("hello")).unwrap().from_cache());
    let second = Runtime::new(config).unwrap();
    let p3 = second.load(&example("hello-p3")).unwrap();
    assert!(p3.from_cache() && p3.is_concurrent(), "{p3:?}");
    assert_eq!(
        second.cache().unwrap().hit_counts(),
        (0, 0),
        "a guest naming WASI 0.3 goes straight to its engine: the plain one is not asked"
    );
    let p2 = second.load(&example("hello")).unwrap();
    assert!(p2.from_cache() && !p2.is_concurrent(), "{p2:?}");
    let entries = walk(dir.path());
    assert_eq!(
        entries.iter().filter(|p| p.ends_with(".cwasm")).count(),
        2,
        "one entry per engine: {entries:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path().display().to_string());
        }
    }
    found
}
