//! The memory of the process that hosts the services: a shim serves one pod, `wasmhttp run` one service, so
//! this is the footprint of that pod or service as the kernel counts it, host structures and compiled code
//! included, which the per-service counters (linear memory) leave out.

/// Resident and proportional set sizes of this process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size now (`VmRSS`).
    pub resident: u64,
    /// The highest resident set size so far (`VmHWM`).
    pub resident_peak: u64,
    /// Proportional set size now (`Pss` of `smaps_rollup`): shared pages (mapped compiled code, libraries)
    /// divided among the processes that map them. `None` where the kernel does not offer it.
    pub proportional: Option<u64>,
}

impl ProcessMemory {
    /// Reads this process's figures from `/proc`; `None` when `/proc` is not there.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok();
        Some(ProcessMemory {
            resident: field_bytes(&status, "VmRSS:")?,
            resident_peak: field_bytes(&status, "VmHWM:")?,
            proportional: rollup.and_then(|text| field_bytes(&text, "Pss:")),
        })
    }
}

/// The value of a `Key:   123 kB` line, in bytes.
fn field_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let kib = line.strip_prefix(key)?.trim().strip_suffix("kB")?.trim();
        kib.parse::<u64>().ok().map(|k| k * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_bytes_and_prefixes_do_not_match_longer_keys() {
        let text = "Rss:     300 kB\nPss_Anon:     7 kB\nPss:     200 kB\n";
        assert_eq!(field_bytes(text, "Pss:"), Some(200 * 1024));
        assert_eq!(field_bytes(text, "Swap:"), None);
        let now = ProcessMemory::read().unwrap();
        assert!(
            now.resident > 0 && now.resident_peak >= now.resident,
            "{now:?}"
        );
        assert!(
            now.proportional.is_some_and(|p| p > 0 && p <= now.resident),
            "{now:?}"
        );
    }
}
