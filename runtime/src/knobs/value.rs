//! One parser per kind of knob value: size, duration, CPU amount, count, positive count.
//!
//! Every front end (CLI flags, `wasmhttp.io/` annotations, the node TOML) parses through these, so a value
//! means the same wherever it is written, and every error names the accepted form the same way.

use std::time::Duration;

/// The longest duration a knob accepts: far beyond any sensible timeout, and small enough that adding it to
/// any `Instant` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a kind of value looks like, for help texts and errors.
#[derive(Debug)]
pub struct Form {
    /// Placeholder in `--help` (`SIZE`, `DURATION`, …).
    pub metavar: &'static str,
    /// The accepted form, completing "expected …".
    pub expected: &'static str,
}

/// Sizes in bytes: `64Mi`, `1Gi`, `512M`, `1048576`, `10MiB`.
pub mod size {
    use super::Form;
    /// The accepted form.
    pub const FORM: Form = Form {
        metavar: "SIZE",
        expected: "a size such as 64Mi, 1Gi or 1048576",
    };

    /// Binary suffixes (`Ki`, `Mi`, `Gi`, `Ti`, optionally followed by `B`) are powers of 1024; decimal ones
    /// (`k`, `M`, `G`, `T`) powers of 1000, as in Kubernetes quantities.
    pub fn parse(text: &str) -> Result<u64, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size"))?;
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
            _ => return Err(format!("{text:?} has an unknown unit {suffix:?}")),
        };
        number
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    /// The shortest exact spelling.
    pub fn show(bytes: u64) -> String {
        for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if bytes != 0 && bytes.trailing_zeros() >= shift {
                return format!("{}{unit}", bytes >> shift);
            }
        }
        bytes.to_string()
    }
}

/// Durations: `5s`, `250ms`, `2m`, `1h`, `1.5s`.
pub mod duration {
    use super::{Form, MAX_DURATION};
    use std::time::Duration;
    /// The accepted form.
    pub const FORM: Form = Form {
        metavar: "DURATION",
        expected: "a duration such as 5s or 250ms (above zero, at most a year)",
    };

    /// Parses a positive duration with a unit, up to [`MAX_DURATION`].
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("{text:?} has an unknown unit {unit:?}")),
        };
        match Duration::try_from_secs_f64(seconds) {
            Ok(d) if !d.is_zero() && d <= MAX_DURATION => Ok(d),
            _ => Err(format!("{text:?} is out of range")),
        }
    }

    /// The shortest exact spelling.
    pub fn show(d: Duration) -> String {
        let ms = d.as_millis();
        match ms {
            _ if !d.subsec_nanos().is_multiple_of(1_000_000) => {
                format!("{}ms", d.as_secs_f64() * 1000.0)
            }
            _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
            _ => format!("{ms}ms"),
        }
    }
}

/// CPU amounts in cores: `0.5`, `2`, `500m`.
pub mod cpus {
    use super::Form;
    /// The accepted form.
    pub const FORM: Form = Form {
        metavar: "CPUS",
        expected: "a number of cores, at least 1m, such as 0.5 or 500m",
    };

    /// The smallest CPU limit: Kubernetes' smallest CPU unit, and the least the kernel's CFS allows (a quota
    /// of 1 ms in its longest period, 1 s). Below it a throttled request would park for ages.
    pub const MIN: f64 = 0.001;

    /// Parses cores (or millicores with `m`) into CPU-seconds per second.
    pub fn parse(text: &str) -> Result<f64, String> {
        let text = text.trim();
        let value = match text.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
            None => text.parse::<f64>(),
        }
        .map_err(|_| format!("{text:?} is not a CPU amount"))?;
        if !(value.is_finite() && (MIN..=1e6).contains(&value)) {
            return Err(format!("{text:?} is out of range"));
        }
        Ok(value)
    }

    /// Cores as a plain number.
    pub fn show(cores: f64) -> String {
        cores.to_string()
    }
}

/// Counts that may be zero.
pub mod count {
    use super::Form;
    /// The accepted form.
    pub const FORM: Form = Form {
        metavar: "N",
        expected: "an integer of 0 or more",
    };

    /// Parses a non-negative integer.
    pub fn parse(text: &str) -> Result<u64, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an integer of 0 or more"))
    }

    /// The integer.
    pub fn show(n: u64) -> String {
        n.to_string()
    }
}

/// Counts above zero.
pub mod positive {
    use super::Form;
    /// The accepted form.
    pub const FORM: Form = Form {
        metavar: "N",
        expected: "a positive integer",
    };

    /// Parses an integer above zero.
    pub fn parse(text: &str) -> Result<u64, String> {
        super::count::parse(text)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{text:?} is not a positive integer"))
    }

    /// The integer.
    pub fn show(n: u64) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size::parse("64Mi").unwrap(), 64 << 20);
        assert_eq!(size::parse("64MiB").unwrap(), 64 << 20);
        assert_eq!(size::parse("1Gi").unwrap(), 1 << 30);
        assert_eq!(size::parse("512M").unwrap(), 512_000_000);
        assert_eq!(size::parse("4096").unwrap(), 4096);
        assert!(size::parse("64Xi").unwrap_err().contains("unknown unit"));
        assert!(size::parse("lots").unwrap_err().contains("not a size"));
        assert!(
            size::parse("99999999999Ti")
                .unwrap_err()
                .contains("too large")
        );
        for bytes in [0, 1, 1000, 1 << 10, 3 << 20, 512 << 20, 5 << 40] {
            assert_eq!(size::parse(&size::show(bytes)).unwrap(), bytes);
        }
        assert_eq!(size::show(512 << 20), "512Mi");
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(duration::parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            duration::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(duration::parse("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["5", "0s", "-1s", "x", "1e30s", "9000h"] {
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(duration::show(Duration::from_secs(30)), "30s");
        assert_eq!(duration::show(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration::show(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn cpus_and_counts() {
        assert_eq!(cpus::parse("500m").unwrap(), 0.5);
        assert_eq!(cpus::parse("2").unwrap(), 2.0);
        assert_eq!(cpus::parse("1m").unwrap(), cpus::MIN);
        for bad in ["0", "-1", "NaN", "inf", "two", "1e-300", "0.5m", "0.0009"] {
            assert!(cpus::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(count::parse("0").unwrap(), 0);
        assert!(count::parse("-1").is_err());
        assert!(positive::parse("0").is_err());
        assert_eq!(positive::parse("7").unwrap(), 7);
    }
}
