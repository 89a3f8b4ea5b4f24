//! The runtime's stats in containerd's cgroup `Metrics` types, so `ctr task metrics` and CRI stats read them.
//!
//! containerd decodes the type its host uses: cgroup v2 metrics when `/sys/fs/cgroup/cgroup.controllers`
//! exists, v1 otherwise. Memory usage is the linear memory of live instances, the host memory held for
//! the service and its compiled code; CPU usage is the CPU time spent running its instances.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::util::convert_to_any;
use wasmhttp_runtime::{Limits, StatsSnapshot};

/// What cgroup v1 reports for "no limit".
const V1_UNLIMITED: u64 = 9_223_372_036_854_771_712;

/// Whether this host runs the unified (v2) cgroup hierarchy.
pub fn host_uses_cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Encodes `stats` as the Metrics type containerd expects on this host.
pub fn encode(
    stats: &StatsSnapshot,
    limits: &Limits,
    code_size: u64,
    v2: bool,
) -> Result<Any, String> {
    let usage = stats.memory_current + stats.host_memory + code_size;
    let peak = (stats.memory_peak + code_size).max(usage);
    let message: Box<dyn containerd_shim::protos::protobuf::MessageDyn> = if v2 {
        Box::new(v2::Metrics {
            memory: Some(v2::MemoryStat {
                usage,
                max_usage: peak,
                usage_limit: limits.memory.unwrap_or(u64::MAX),
                anon: stats.memory_current,
                ..Default::default()
            })
            .into(),
            cpu: Some(v2::CPUStat {
                usage_usec: stats.cpu_time.as_micros() as u64,
                user_usec: stats.cpu_time.as_micros() as u64,
                nr_throttled: stats.throttled_periods,
                throttled_usec: stats.throttled_time.as_micros() as u64,
                ..Default::default()
            })
            .into(),
            pids: Some(v2::PidsStat {
                current: stats.in_flight,
                limit: limits.max_concurrency.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            // cgroup v2 counts hits of memory.max here; a refused memory growth is ours.
            memory_events: Some(v2::MemoryEvents {
                max: stats.memory_refusals,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    } else {
        Box::new(v1::Metrics {
            memory: Some(v1::MemoryStat {
                usage: Some(v1::MemoryEntry {
                    usage,
                    max: peak,
                    limit: limits.memory.unwrap_or(V1_UNLIMITED),
                    failcnt: stats.memory_refusals,
                    ..Default::default()
                })
                .into(),
                rss: stats.memory_current,
                ..Default::default()
            })
            .into(),
            cpu: Some(v1::CPUStat {
                usage: Some(v1::CPUUsage {
                    total: stats.cpu_time.as_nanos() as u64,
                    user: stats.cpu_time.as_nanos() as u64,
                    ..Default::default()
                })
                .into(),
                throttling: Some(v1::Throttle {
                    throttled_periods: stats.throttled_periods,
                    throttled_time: stats.throttled_time.as_nanos() as u64,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            pids: Some(v1::PidsStat {
                current: stats.in_flight,
                limit: limits.max_concurrency.unwrap_or(0),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    };
    convert_to_any(message).map_err(|e| format!("cannot encode metrics: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn both_cgroup_versions_carry_memory_and_cpu() {
        let stats = StatsSnapshot {
            memory_current: 1000,
            host_memory: 200,
            cpu_time: std::time::Duration::from_millis(5),
            throttled_periods: 3,
            throttled_time: std::time::Duration::from_millis(7),
            memory_refusals: 2,
            ..Default::default()
        };
        let limits = Limits {
            memory: Some(4096),
            ..Limits::default()
        };
        let any = encode(&stats, &limits, 24, false).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let decoded = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(decoded.memory.usage.usage, 1224);
        assert_eq!(decoded.memory.usage.limit, 4096);
        assert_eq!(decoded.cpu.usage.total, 5_000_000);
        assert_eq!(decoded.memory.usage.failcnt, 2);
        assert_eq!(
            (
                decoded.cpu.throttling.throttled_periods,
                decoded.cpu.throttling.throttled_time
            ),
            (3, 7_000_000)
        );
        let any = encode(&stats, &limits, 24, true).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let decoded = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(
            (
                decoded.memory.usage,
                decoded.memory.usage_limit,
                decoded.cpu.usage_usec
            ),
            (1224, 4096, 5000)
        );
        assert_eq!(
            (decoded.cpu.nr_throttled, decoded.cpu.throttled_usec),
            (3, 7000)
        );
        assert_eq!(decoded.memory_events.max, 2);
    }
}
