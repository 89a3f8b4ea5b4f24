use super::*;

struct Fixed(StatsSnapshot, Limits);

impl Observed for Fixed {
    fn observe(&self) -> (StatsSnapshot, Limits) {
        (self.0.clone(), self.1.clone())
    }
}

fn source(stats: StatsSnapshot, limits: Limits) -> Arc<dyn Observed> {
    Arc::new(Fixed(stats, limits))
}

#[test]
fn every_row_carries_its_labels_and_limits_only_when_set() {
    let set = MetricsSet::default();
    let stats = StatsSnapshot {
        served_by_class: [0, 7, 0, 0, 0],
        failed_trap: 2,
        failed_timeout: 1,
        cpu_time: Duration::from_millis(1500),
        ..Default::default()
    };
    let limited = source(
        stats,
        Limits {
            memory: Some(1 << 20),
            ..Limits::default()
        },
    );
    let unlimited = source(StatsSnapshot::default(), Limits::default());
    set.add(
        vec![("container_id".into(), "a".into())],
        Arc::downgrade(&limited),
    );
    set.add(
        vec![("container_id".into(), "b\"q".into())],
        Arc::downgrade(&unlimited),
    );
    let text = set.render();
    for line in [
        "wasmhttp_requests_total{container_id=\"a\",code=\"2xx\",cause=\"guest\"} 7",
        "wasmhttp_requests_total{container_id=\"a\",code=\"5xx\",cause=\"trap\"} 2",
        "wasmhttp_requests_total{container_id=\"a\",code=\"5xx\",cause=\"deadline\"} 1",
        "wasmhttp_requests_total{container_id=\"a\",code=\"4xx\",cause=\"body-too-large\"} 0",
        "wasmhttp_cpu_seconds_total{container_id=\"a\"} 1.5",
        "wasmhttp_memory_limit_bytes{container_id=\"a\"} 1048576",
        "wasmhttp_requests_in_flight{container_id=\"b\\\"q\"} 0",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains("wasmhttp_memory_limit_bytes{container_id=\"b"),
        "{text}"
    );
}

#[test]
fn the_process_memory_carries_the_labels_every_source_shares() {
    let set = MetricsSet::default();
    let pod = |container: &str| -> Labels {
        vec![
            ("container_id".into(), container.into()),
            ("namespace".into(), "shop".into()),
            ("pod".into(), "web-0".into()),
        ]
    };
    let (a, b) = (
        source(StatsSnapshot::default(), Limits::default()),
        source(StatsSnapshot::default(), Limits::default()),
    );
    set.add(pod("a"), Arc::downgrade(&a));
    set.add(pod("b"), Arc::downgrade(&b));
    let text = set.render();
    for name in ["resident", "resident_peak", "proportional"] {
        let series = format!("wasmhttp_process_{name}_bytes{{namespace=\"shop\",pod=\"web-0\"}} ");
        let line = text.lines().find(|l| l.starts_with(&series));
        let bytes: u64 = line
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        assert!(bytes > 0, "no {series:?} in\n{text}");
    }
    drop((a, b));
    assert!(
        set.render().contains("wasmhttp_process_resident_bytes "),
        "no sources, no labels"
    );
}

#[test]
fn histograms_are_cumulative_in_seconds() {
    let histogram = crate::stats::Histogram::durations();
    histogram.record_duration(Duration::from_millis(3));
    histogram.record_duration(Duration::from_secs(60));
    let stats = StatsSnapshot {
        request_durations: histogram.snapshot(),
        ..Default::default()
    };
    let set = MetricsSet::default();
    let one = source(stats, Limits::default());
    set.add(vec![], Arc::downgrade(&one));
    let text = set.render();
    for line in [
        "wasmhttp_request_duration_seconds_bucket{le=\"0.0025\"} 0",
        "wasmhttp_request_duration_seconds_bucket{le=\"0.005\"} 1",
        "wasmhttp_request_duration_seconds_bucket{le=\"+Inf\"} 2",
        "wasmhttp_request_duration_seconds_count 2",
        "wasmhttp_request_duration_seconds_sum 60.003",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

#[test]
fn a_dropped_source_leaves_the_next_scrape() {
    let set = MetricsSet::default();
    let gone = source(StatsSnapshot::default(), Limits::default());
    set.add(
        vec![("container_id".into(), "gone".into())],
        Arc::downgrade(&gone),
    );
    assert!(set.render().contains("gone"));
    drop(gone);
    assert!(!set.render().contains("gone"));
}
