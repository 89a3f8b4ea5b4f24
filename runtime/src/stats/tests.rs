use super::*;

#[test]
fn memory_total_is_never_exceeded() {
    let stats = Stats::default();
    assert!(stats.try_grow_memory(60, Some(100)));
    assert!(!stats.try_grow_memory(41, Some(100)));
    assert!(stats.try_grow_memory(40, Some(100)));
    stats.release_memory(50, Some(100));
    let snap = stats.snapshot();
    assert_eq!((snap.memory_current, snap.memory_peak), (50, 100));
}

#[test]
fn a_pod_total_adds_every_figure() {
    let one = StatsSnapshot {
        requests_served: 3,
        served_by_class: [0, 3, 0, 0, 0],
        cpu_time: Duration::from_millis(5),
        memory_current: 10,
        memory_peak: 20,
        in_flight: 1,
        ..Default::default()
    };
    let mut total = one.clone();
    total.add(&one);
    assert_eq!(
        (total.requests_served, total.cpu_time, total.memory_current),
        (6, Duration::from_millis(10), 20)
    );
    assert_eq!((total.memory_peak, total.in_flight), (40, 2));
    assert_eq!(total.served_by_class, [0, 6, 0, 0, 0]);
}

#[test]
fn answers_are_counted_by_status_class_and_every_request_once() {
    let stats = Stats::default();
    stats.served(200);
    stats.served(404);
    stats.served(599);
    stats.failed(FailureCause::Trap);
    stats.rejected(Rejection::BodyTooLarge);
    let snap = stats.snapshot();
    assert_eq!(snap.served_by_class, [0, 1, 0, 1, 1]);
    assert_eq!((snap.requests_served, snap.requests_total()), (3, 5));
    assert_eq!(snap.rejected, [1, 0, 0]);
}

#[test]
fn instances_peak_is_kept_after_they_finish() {
    let stats = Stats::default();
    stats.instance_started();
    stats.instance_started();
    stats.instance_finished();
    let snap = stats.snapshot();
    assert_eq!((snap.instances_live, snap.instances_peak), (1, 2));
}

#[test]
fn failures_are_counted_by_cause() {
    let stats = Stats::default();
    stats.failed(FailureCause::Overload);
    stats.failed(FailureCause::Memory);
    stats.failed(FailureCause::Memory);
    let snap = stats.snapshot();
    assert_eq!(
        (snap.failed_overload, snap.failed_memory, snap.failed_trap),
        (1, 2, 0)
    );
}
