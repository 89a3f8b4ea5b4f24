//! OCI `linux.resources` → the knobs they set: the only place OCI resource fields are read. The fold that
//! ranks them against node defaults, ceilings and annotations is the runtime's ([`wasmhttp_runtime::fold`]).

use oci_spec::runtime::LinuxResources;
use wasmhttp_runtime::Limits;
use wasmhttp_runtime::knobs::value::cpus;

/// The knobs the OCI resource fields set (unset fields stay `None`).
///
/// | OCI | knob |
/// |---|---|
/// | `memory.limit` (bytes, > 0) | `memory` |
/// | `cpu.quota` / `cpu.period` (both > 0) | `cpus` = quota / period |
/// | `cpu.shares` (> 0), else `unified["cpu.weight"]` (× 1024 / 100) | `cpu-shares` |
/// | `pids.limit` (> 0) | `max-concurrency` |
///
/// A CPU limit below the least the `cpus` knob accepts (1m), or a `cpu.weight` outside cgroup v2's 1–10000, is
/// refused with the fields at fault named, as runc's kernel would refuse it.
pub fn oci_limits(resources: Option<&LinuxResources>) -> Result<Limits, String> {
    let mut limits = Limits::default();
    let Some(resources) = resources else {
        return Ok(limits);
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
        let cpus = quota as f64 / period as f64;
        if cpus < cpus::MIN {
            return Err(format!(
                "linux.resources.cpu: quota {quota} / period {period} is {cpus} CPUs, below the least a CPU \
                 limit can be ({}m)",
                cpus::MIN * 1000.0
            ));
        }
        limits.cpus = Some(cpus);
    }
    let weight = match resources
        .unified()
        .as_ref()
        .and_then(|u| u.get("cpu.weight"))
    {
        None => None,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(w @ 1..=10_000) => Some(w * 1024 / 100),
            _ => {
                return Err(format!(
                    "linux.resources.unified[\"cpu.weight\"]: {text:?} is not a weight from 1 to 10000"
                ));
            }
        },
    };
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
    Ok(limits)
}

/// Applies an Update's resources to the OCI layer `oci` (the limits the container was created with, as
/// updated since). A field that is absent, or 0, leaves its knob as it was; one set keeps that value; a
/// negative `memory.limit`, `cpu.quota` or `pids.limit` removes the limit, as `runc update` writes `max`
/// for it, so the knob falls back to what the other layers say, as if the container had been created so.
pub fn oci_update(oci: &mut Limits, resources: &LinuxResources) -> Result<(), String> {
    oci.take_set(&oci_limits(Some(resources))?);
    let memory = resources.memory().as_ref();
    if memory.and_then(|m| m.limit()).is_some_and(|l| l < 0) {
        oci.memory = None;
    }
    let cpu = resources.cpu().as_ref();
    if cpu.and_then(|c| c.quota()).is_some_and(|q| q < 0) {
        oci.cpus = None;
    }
    if resources.pids().as_ref().is_some_and(|p| p.limit() < 0) {
        oci.max_concurrency = None;
    }
    Ok(())
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
        let limits = oci_limits(Some(&resources)).unwrap();
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.cpus, Some(0.5));
        assert_eq!(limits.max_concurrency, Some(4));
        let shares: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"shares":512},"unified":{"cpu.weight":"50"}}"#)
                .unwrap();
        assert_eq!(oci_limits(Some(&shares)).unwrap().cpu_shares, Some(512));
        let weight: LinuxResources =
            serde_json::from_str(r#"{"unified":{"cpu.weight":"200"}}"#).unwrap();
        assert_eq!(oci_limits(Some(&weight)).unwrap().cpu_shares, Some(2048));
        let unset: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":0},"cpu":{"quota":-1}}"#).unwrap();
        assert_eq!(oci_limits(Some(&unset)), Ok(Limits::default()));
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out_and_removes_what_it_sets_to_minus_one() {
        let created: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000},"pids":{"limit":4}}"#,
        )
        .unwrap();
        let mut oci = oci_limits(Some(&created)).unwrap();
        let update = |oci: &mut Limits, json: &str| {
            oci_update(oci, &serde_json::from_str(json).unwrap()).unwrap();
            (oci.memory, oci.cpus, oci.max_concurrency)
        };
        assert_eq!(
            update(&mut oci, r#"{"memory":{"limit":0},"pids":{"limit":8}}"#),
            (Some(64 << 20), Some(0.5), Some(8)),
            "0 and absent leave a knob as it was"
        );
        assert_eq!(
            update(&mut oci, r#"{"memory":{"limit":-1}}"#),
            (None, Some(0.5), Some(8))
        );
        assert_eq!(
            update(
                &mut oci,
                r#"{"cpu":{"quota":-1,"period":100000},"pids":{"limit":-1}}"#
            ),
            (None, None, None)
        );
        assert!(
            oci_update(
                &mut oci,
                &serde_json::from_str(r#"{"unified":{"cpu.weight":"0"}}"#).unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn limits_no_kernel_would_take_are_refused_naming_the_field() {
        let least: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"quota":1000,"period":1000000}}"#).unwrap();
        assert_eq!(oci_limits(Some(&least)).unwrap().cpus, Some(cpus::MIN));
        let tiny: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"quota":1,"period":18446744073709551615}}"#).unwrap();
        let err = oci_limits(Some(&tiny)).unwrap_err();
        assert!(
            err.starts_with("linux.resources.cpu: quota 1 / period"),
            "{err}"
        );
        for weight in ["0", "10001", "18446744073709551615", "heavy"] {
            let resources: LinuxResources =
                serde_json::from_str(&format!(r#"{{"unified":{{"cpu.weight":"{weight}"}}}}"#))
                    .unwrap();
            let err = oci_limits(Some(&resources)).unwrap_err();
            assert!(err.contains("cpu.weight") && err.contains(weight), "{err}");
        }
    }
}
