//! The one `Limits` value a service or command runs under.
//!
//! Where each field is enforced:
//!
//! | field | mechanism | when hit |
//! |---|---|---|
//! | `memory_per_instance` | [`ResourceLimiter`](wasmtime::ResourceLimiter) on every store | the growing instance traps → 500 "memory limit exceeded" |
//! | `memory_total` | the same limiter, charging a counter shared by all live instances | as above |
//! | `cpu` | CPU time measured per poll, refilling a token bucket; epoch callbacks park instances while it is empty | throttled, not killed |
//! | `cpu_shares` | the same bucket, refilled at the service's weighted share of the host's CPUs while other services of the runtime are busy | throttled to its share |
//! | `fuel_per_request` | `Store::set_fuel` | 500 "cpu budget exceeded" |
//! | `max_concurrency` / `queue_depth` | admission counter in front of instantiation | 503 with `Retry-After` |
//! | `request_timeout` | epoch deadline (CPU-bound guests) and a host timer (guests waiting on I/O) | 504 "deadline exceeded" |

use std::time::Duration;

/// Resource limits for one service (all of its instances together) or one command run.
///
/// `None` means "no limit of this kind". The struct is plain data: callers build it from whatever
/// configuration they have (CLI flags, an OCI spec) and hand it over; [`crate::ServiceHandle::update_limits`]
/// swaps it for the next requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Maximum linear memory, in bytes, one instance may hold (tables are capped by element count in
    /// [`crate::EngineConfig`]).
    pub memory_per_instance: Option<u64>,
    /// Maximum linear memory, in bytes, held by all live instances together.
    pub memory_total: Option<u64>,
    /// Sustained CPU rate, in CPU-seconds per second (0.5 = half a core).
    pub cpu: Option<f64>,
    /// Relative CPU weight against the other services of the same [`crate::Runtime`] when they contend
    /// (cgroup v1 `cpu.shares` units; `None` = [`crate::DEFAULT_CPU_SHARES`]).
    pub cpu_shares: Option<u64>,
    /// Fuel one request (or one command run) may consume before it is stopped.
    pub fuel_per_request: Option<u64>,
    /// Maximum instances running at once.
    pub max_concurrency: Option<usize>,
    /// Requests that may wait for a free slot when `max_concurrency` is reached; the rest get 503.
    pub queue_depth: usize,
    /// Wall-clock time one request (or command) may take.
    pub request_timeout: Option<Duration>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_request_body: u64,
}

/// The request body cap used when nothing else is configured: 16 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_per_instance: None,
            memory_total: None,
            cpu: None,
            cpu_shares: None,
            fuel_per_request: None,
            max_concurrency: None,
            queue_depth: 0,
            request_timeout: None,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
        }
    }
}

impl Limits {
    /// The weight used for CPU sharing.
    pub fn effective_cpu_shares(&self) -> u64 {
        self.cpu_shares.unwrap_or(crate::cpu::DEFAULT_CPU_SHARES)
    }

    /// The per-instance memory cap actually in force: the smaller of the two memory limits.
    pub fn effective_instance_memory(&self) -> Option<u64> {
        match (self.memory_per_instance, self.memory_total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parses a memory size such as `64Mi`, `1Gi`, `512M`, `1048576` or `10MiB` into bytes.
///
/// Binary suffixes (`Ki`, `Mi`, `Gi`, `Ti`, optionally followed by `B`) are powers of 1024; decimal ones
/// (`k`, `M`, `G`, `T`) powers of 1000, as in Kubernetes quantities.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!(
            "invalid memory size {text:?}: expected a number with an optional unit such as 64Mi"
        )
    })?;
    let multiplier: u64 = match suffix.trim_end_matches('B') {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid memory size {text:?}: unknown unit {suffix:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid memory size {text:?}: too large"))
}

/// Parses a duration such as `5s`, `250ms`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number with a unit such as 5s or 250ms")
    })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("invalid duration {text:?}: out of range"))
}

/// Parses a CPU amount such as `0.5`, `2` or `500m` (millicores) into CPU-seconds per second.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| {
        format!("invalid CPU amount {text:?}: expected a number of cores such as 0.5 or 500m")
    })?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!(
            "invalid CPU amount {text:?}: must be greater than zero"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_memory("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("512M").unwrap(), 512_000_000);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert!(parse_memory("64Xi").unwrap_err().contains("unknown unit"));
        assert!(
            parse_memory("lots")
                .unwrap_err()
                .contains("invalid memory size")
        );
    }

    #[test]
    fn durations_and_cpus() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_cpus("500m").unwrap(), 0.5);
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn instance_memory_is_the_smaller_cap() {
        let limits = Limits {
            memory_per_instance: Some(10),
            memory_total: Some(5),
            ..Limits::default()
        };
        assert_eq!(limits.effective_instance_memory(), Some(5));
        assert_eq!(Limits::default().effective_instance_memory(), None);
    }
}
