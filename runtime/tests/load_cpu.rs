//! A guest's load is charged the CPU it took, not what the process's other services used meanwhile. Alone
//! in its own test binary: the figure comes from the process's CPU clock, which other tests would move.

mod common;

use common::*;
use std::time::{Duration, Instant};
use wasmhttp_runtime::*;

/// Loads hello on a blocking thread, as the shim does; the CPU charged for it and how long it took.
async fn load_hello(runtime: &Runtime) -> (Duration, Duration) {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let cpu = runtime.load(&example("hello")).unwrap().load_cpu();
        (cpu, started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_is_charged_its_own_cpu_not_what_other_services_used_meanwhile() {
    let runtime = Runtime::new(EngineConfig {
        max_instances: 8,
        charge_whole_process: true,
        ..EngineConfig::default()
    })
    .unwrap();
    // No compile cache: every load compiles. The first also pays the process's one-time setup.
    load_hello(&runtime).await;
    let (quiet, took) = load_hello(&runtime).await;

    // A neighbour burns both CPUs, metered, for the whole of the next load.
    let burner = serve(
        &runtime,
        "cpu-burn",
        Limits::default(),
        Capabilities::default(),
    );
    let target = format!("/?ms={}", (took * 10).as_millis().max(1000));
    let burning: Vec<_> = (0..2)
        .map(|_| {
            let (addr, target) = (burner.addr, target.clone());
            tokio::spawn(async move { get_async(addr, &target).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while burner.handle.stats().cpu_time < Duration::from_millis(50) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = burner.handle.stats().cpu_time;
    let (busy, _) = load_hello(&runtime).await;
    let neighbour = burner.handle.stats().cpu_time - before;

    for burn in burning {
        assert_eq!(burn.await.unwrap().status, 200);
    }
    assert!(
        neighbour > quiet / 2,
        "the neighbour used only {neighbour:?} during a load of {quiet:?}: the test shows nothing"
    );
    // The process's clock gave about quiet + neighbour; subtracting what the meters charged, about zero.
    // A busy sibling CPU may make the compile itself take more CPU time: the upper bound has room for it.
    assert!(
        busy > quiet / 2 && busy < quiet * 7 / 4,
        "a load charged {busy:?} beside a busy neighbour ({neighbour:?} meanwhile), {quiet:?} alone"
    );
}
