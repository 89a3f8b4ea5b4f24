//! OCI `linux.resources` → the knobs they set: the only place OCI resource fields are read. The fold that
//! ranks them against node defaults, ceilings and annotations is the runtime's ([`wasmhttp_runtime::fold`]).

use oci_spec::runtime::LinuxResources;
use wasmhttp_runtime::Limits;

/// The knobs the OCI resource fields set (unset fields stay `None`).
///
/// | OCI | knob |
/// |---|---|
/// | `memory.limit` (bytes, > 0) | `memory` |
/// | `cpu.quota` / `cpu.period` (both > 0) | `cpus` = quota / period |
/// | `cpu.shares` (> 0), else `unified["cpu.weight"]` (× 1024 / 100) | `cpu-shares` |
/// | `pids.limit` (> 0) | `max-concurrency` |
pub fn oci_limits(resources: Option<&LinuxResources>) -> Limits {
    let mut limits = Limits::default();
    let Some(resources) = resources else {
        return limits;
    };
    limits.memory = resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    if let Some(cpu) = resources.cpu()
        && let (Some(quota), Some(period)) = (cpu.quota(), cpu.period())
        && quota > 0
        && period > 0
    {
        limits.cpus = Some(quota as f64 / period as f64);
    }
    let weight = resources
        .unified()
        .as_ref()
        .and_then(|u| u.get("cpu.weight"))
        .and_then(|w| w.trim().parse::<u64>().ok())
        .map(|w| w * 1024 / 100);
    limits.cpu_shares = resources
        .cpu()
        .as_ref()
        .and_then(|c| c.shares())
        .filter(|s| *s > 0)
        .or(weight.filter(|w| *w > 0));
    limits.max_concurrency = resources
        .pids()
        .as_ref()
        .map(|p| p.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64);
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
        let limits = oci_limits(Some(&resources));
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.cpus, Some(0.5));
        assert_eq!(limits.max_concurrency, Some(4));
        let shares: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"shares":512},"unified":{"cpu.weight":"50"}}"#)
                .unwrap();
        assert_eq!(oci_limits(Some(&shares)).cpu_shares, Some(512));
        let weight: LinuxResources =
            serde_json::from_str(r#"{"unified":{"cpu.weight":"200"}}"#).unwrap();
        assert_eq!(oci_limits(Some(&weight)).cpu_shares, Some(2048));
        let unset: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":0},"cpu":{"quota":-1}}"#).unwrap();
        assert_eq!(oci_limits(Some(&unset)), Limits::default());
    }
}
