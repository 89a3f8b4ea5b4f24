//! OCI `linux.resources` → the runtime's `Limits`: the only place OCI resource fields are read.

use oci_spec::runtime::LinuxResources;
use wasmhttp_runtime::Limits;

/// Applies the OCI resource fields that are set onto `base` (node or annotation defaults).
///
/// | OCI | `Limits` |
/// |---|---|
/// | `memory.limit` (bytes, > 0) | `memory_total` (per instance: the same, unless lower by default) |
/// | `cpu.quota` / `cpu.period` (both > 0) | `cpu` = quota / period CPU-seconds per second |
/// | `cpu.shares` (> 0), else `unified["cpu.weight"]` (× 1024 / 100) | `cpu_shares` |
/// | `pids.limit` (> 0) | `max_concurrency` |
pub fn apply_resources(base: &Limits, resources: Option<&LinuxResources>) -> Limits {
    let mut limits = base.clone();
    let Some(resources) = resources else {
        return limits;
    };
    if let Some(limit) = resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
    {
        limits.memory_total = Some(limit as u64);
    }
    if let Some(cpu) = resources.cpu()
        && let (Some(quota), Some(period)) = (cpu.quota(), cpu.period())
        && quota > 0
        && period > 0
    {
        limits.cpu = Some(quota as f64 / period as f64);
    }
    let weight = resources
        .unified()
        .as_ref()
        .and_then(|u| u.get("cpu.weight"))
        .and_then(|w| w.trim().parse::<u64>().ok())
        .map(|w| w * 1024 / 100);
    if let Some(shares) = resources
        .cpu()
        .as_ref()
        .and_then(|c| c.shares())
        .filter(|s| *s > 0)
        .or(weight.filter(|w| *w > 0))
    {
        limits.cpu_shares = Some(shares);
    }
    if let Some(pids) = resources
        .pids()
        .as_ref()
        .map(|p| p.limit())
        .filter(|l| *l > 0)
    {
        limits.max_concurrency = Some(pids as usize);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_fields_map_onto_limits() {
        let resources: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000},"pids":{"limit":4}}"#,
        )
        .unwrap();
        let limits = apply_resources(&Limits::default(), Some(&resources));
        assert_eq!(limits.memory_total, Some(64 << 20));
        assert_eq!(limits.cpu, Some(0.5));
        assert_eq!(limits.max_concurrency, Some(4));
        let shares: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"shares":512},"unified":{"cpu.weight":"50"}}"#)
                .unwrap();
        assert_eq!(
            apply_resources(&Limits::default(), Some(&shares)).cpu_shares,
            Some(512)
        );
        let weight: LinuxResources =
            serde_json::from_str(r#"{"unified":{"cpu.weight":"200"}}"#).unwrap();
        assert_eq!(
            apply_resources(&Limits::default(), Some(&weight)).cpu_shares,
            Some(2048)
        );
        let unset: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":0},"cpu":{"quota":-1}}"#).unwrap();
        assert_eq!(
            apply_resources(&Limits::default(), Some(&unset)),
            Limits::default()
        );
    }
}
