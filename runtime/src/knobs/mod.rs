//! The one model of every limit and knob: [`Limits`], described knob by knob in [`KNOBS`].
//!
//! A knob has one name, spelled the same everywhere: the CLI flag `--request-timeout`, the annotation
//! `wasmhttp.io/request-timeout`, the key `request-timeout` in the node configuration's `[defaults]` and
//! `[ceilings]`. Its value is parsed by the one parser of its kind ([`value`]), and [`fold`] merges the layers
//! (built-in defaults, node defaults, OCI `linux.resources`, node ceilings, annotations or flags) the same way
//! for Create, Update and `wasmhttp run`.
//!
//! Adding a knob is one line in the `knobs!` list below (field, kind, name, doc), one enforcement site that
//! reads the field, one test, and `WASMHTTP_BLESS=1 cargo test -p wasmhttp-runtime knobs` to regenerate
//! README's table.

mod fold;
pub mod value;

pub use fold::{Layers, Refused, fold};
use std::time::Duration;

/// One knob: its name, what it takes, where it may also come from, and typed access to its field.
pub struct Knob {
    /// The name in flags, annotations (after `wasmhttp.io/`) and the node TOML.
    pub name: &'static str,
    /// What it limits, one sentence.
    pub doc: &'static str,
    /// The kind of value it takes.
    pub form: &'static value::Form,
    /// The OCI field that also sets it, if any (an annotation then overrides that field, as [`fold`] ranks it).
    pub oci: Option<&'static str>,
    /// A CLI flag name it had before this model, accepted for one release with a deprecation line.
    pub old_flag: Option<&'static str>,
    /// What happens when the limit is hit.
    pub when_hit: &'static str,
    /// The default in words, for knobs whose built-in default depends on the guest (else it is read from
    /// [`builtin_defaults`]).
    pub default_note: Option<&'static str>,
    /// A minimum rather than a maximum: a lower value is looser, so the node's ceiling is the lowest an
    /// override may ask for.
    pub lower_is_looser: bool,
    set: fn(&mut Limits, &str) -> Result<(), String>,
    get: fn(&Limits) -> Option<String>,
    take: fn(&mut Limits, &Limits),
    exceeds: fn(&Limits, &Limits) -> bool,
    differs: fn(&Limits, &Limits) -> bool,
}

impl Knob {
    /// Parses `text` into this knob's field of `limits`; the error names the accepted form.
    pub fn set(&self, limits: &mut Limits, text: &str) -> Result<(), String> {
        (self.set)(limits, text).map_err(|e| format!("{e}: expected {}", self.form.expected))
    }

    /// This knob's value in `limits`, spelled as it would be written; `None` when unset.
    pub fn get(&self, limits: &Limits) -> Option<String> {
        (self.get)(limits)
    }

    /// The built-in default in words (`None`: no limit unless configured).
    pub fn default_text(&self) -> Option<String> {
        self.default_note
            .map(str::to_string)
            .or_else(|| self.get(&builtin_defaults()))
    }

    /// The knob called `name` (the TOML spelling `request_timeout` of earlier releases included: the
    /// second value says it was that deprecated spelling).
    pub fn named(name: &str) -> Option<(&'static Knob, bool)> {
        if let Some(knob) = KNOBS.iter().find(|k| k.name == name) {
            return Some((knob, false));
        }
        let kebab = name.replace('_', "-");
        KNOBS
            .iter()
            .find(|k| k.name == kebab && name.contains('_'))
            .map(|k| (k, true))
    }
}

macro_rules! knobs {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty, $kind:ident, $name:literal, hit $hit:literal
            $(, oci $oci:literal)? $(, old $old:literal)? $(, default $default:literal)? $(, lower_is_looser $lower:literal)?;
    )*) => {
        /// Every limit of one service (all of its instances together) or one command run. `None` means
        /// "not set here": in a folded value, no limit of that kind (or the built-in default where the
        /// accessor says so).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Limits {
            $( $(#[doc = $doc])+ pub $field: Option<$ty>, )*
        }

        /// Every knob, in the order the docs list them.
        pub static KNOBS: &[Knob] = &[$(
            Knob {
                name: $name,
                doc: concat!($($doc),+),
                form: &value::$kind::FORM,
                oci: knobs!(@opt $($oci)?),
                old_flag: knobs!(@opt $($old)?),
                when_hit: $hit,
                default_note: knobs!(@opt $($default)?),
                lower_is_looser: knobs!(@flag $($lower)?),
                set: |limits, text| {
                    limits.$field = Some(value::$kind::parse(text)?);
                    Ok(())
                },
                get: |limits| limits.$field.map(value::$kind::show),
                take: |to, from| {
                    if from.$field.is_some() {
                        to.$field = from.$field;
                    }
                },
                exceeds: |limits, ceiling| match (limits.$field, ceiling.$field) {
                    (Some(value), Some(ceiling)) if knobs!(@flag $($lower)?) => value < ceiling,
                    (Some(value), Some(ceiling)) => value > ceiling,
                    _ => false,
                },
                differs: |a, b| a.$field != b.$field,
            },
        )*];
    };
    (@opt) => { None };
    (@opt $value:literal) => { Some($value) };
    (@flag) => { false };
    (@flag $value:literal) => { $value };
}

knobs! {
    /// Linear memory of all live instances plus the host memory held for them; also caps one instance.
    memory: u64, size, "memory", hit "the instance taking more traps: 500", oci "memory.limit";
    /// Linear memory of one instance, when lower than `memory`.
    memory_per_instance: u64, size, "memory-per-instance", hit "the growing instance traps: 500";
    /// Sustained CPU rate in cores.
    cpus: f64, cpus, "cpus", hit "throttled, not killed", oci "cpu.quota / cpu.period";
    /// Relative CPU weight against the other services of the same shim when they contend.
    cpu_shares: u64, positive, "cpu-shares", hit "throttled to its share", oci "cpu.shares (or unified cpu.weight)";
    /// Fuel one request (or one command run) may burn.
    fuel_per_request: u64, positive, "fuel-per-request", hit "500 \"fuel exhausted\"", old "fuel";
    /// Requests running at once (on fresh or reused instances).
    max_concurrency: u64, positive, "max-concurrency", hit "queued, then 503 with Retry-After", oci "pids.limit";
    /// Requests that may wait for a free slot when `max-concurrency` is reached.
    queue_depth: u64, count, "queue-depth", hit "503 with Retry-After", old "queue";
    /// Wall-clock time one request (or command) may take.
    request_timeout: Duration, duration, "request-timeout", hit "504 \"deadline exceeded\"", old "timeout";
    /// Largest request body accepted.
    max_request_body: u64, size, "max-request-body", hit "413", old "max-body";
    /// How long a stop (SIGTERM) lets in-flight requests finish.
    drain_timeout: Duration, duration, "drain-timeout", hit "unfinished requests are cut";
    /// Requests one instance serves; above 1, a WASI 0.2 service opts in to serial reuse.
    max_instance_reuse: u64, positive, "max-instance-reuse", hit "a fresh instance",
        default "0.3: 1000; 0.2: 1";
    /// Requests one WASI 0.3 instance serves at once.
    max_instance_concurrency: u64, positive, "max-instance-concurrency", hit "another instance starts";
    /// How long an idle reusable instance is kept.
    idle_instance_timeout: Duration, duration, "idle-instance-timeout", hit "the instance is dropped";
    /// Client connections a service holds open at once.
    max_connections: u64, positive, "max-connections", hit "more wait in the listen backlog";
    /// Bytes per second a request body must keep past its first 64 KiB, after a 5 s grace; 0: none.
    min_request_body_rate: u64, size, "min-request-body-rate", hit "408", lower_is_looser true;
}

/// Requests a WASI 0.3 instance serves, when `max-instance-reuse` is unset.
pub const DEFAULT_P3_INSTANCE_REUSE: u64 = 1000;

/// What a service or command runs under when nothing else is configured. Node defaults replace these.
pub fn builtin_defaults() -> Limits {
    Limits {
        memory: Some(512 << 20),
        queue_depth: Some(0),
        request_timeout: Some(Duration::from_secs(30)),
        max_request_body: Some(DEFAULT_MAX_REQUEST_BODY),
        drain_timeout: Some(Duration::from_secs(10)),
        max_instance_concurrency: Some(16),
        idle_instance_timeout: Some(Duration::from_secs(10)),
        max_connections: Some(DEFAULT_MAX_CONNECTIONS),
        min_request_body_rate: Some(DEFAULT_MIN_REQUEST_BODY_RATE),
        ..Limits::default()
    }
}

/// Connections a service holds when nothing else is configured.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// The pace a streamed request body must keep when none is set: 4 KiB/s, slower than any link an upload
/// would sensibly come over, yet a client must keep sending to keep its slot.
pub const DEFAULT_MIN_REQUEST_BODY_RATE: u64 = 4 << 10;
/// The request body cap when none is set: 16 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 << 20;
/// CPU weight of a service whose `cpu-shares` is unset (cgroup v1's default).
pub const DEFAULT_CPU_SHARES: u64 = 1024;

impl Limits {
    /// Sets the knob `name` from its text form.
    pub fn set(&mut self, name: &str, text: &str) -> Result<(), String> {
        let (knob, _) = Knob::named(name).ok_or_else(|| format!("unknown knob {name:?}"))?;
        knob.set(self, text)
    }

    /// Copies every knob set in `other` over this one.
    pub fn take_set(&mut self, other: &Limits) {
        for knob in KNOBS {
            (knob.take)(self, other);
        }
    }

    /// The weight used for CPU sharing.
    pub fn effective_cpu_shares(&self) -> u64 {
        self.cpu_shares.unwrap_or(DEFAULT_CPU_SHARES)
    }

    /// The per-instance memory cap actually in force: the smaller of the two memory limits.
    pub fn effective_instance_memory(&self) -> Option<u64> {
        match (self.memory_per_instance, self.memory) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Requests that may wait; none when unset.
    pub fn effective_queue_depth(&self) -> usize {
        usize::try_from(self.queue_depth.unwrap_or(0)).unwrap_or(usize::MAX)
    }

    /// Client connections held at once; [`DEFAULT_MAX_CONNECTIONS`] when unset.
    pub fn effective_max_connections(&self) -> usize {
        usize::try_from(self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS))
            .unwrap_or(usize::MAX)
    }

    /// Instances at once; `None` = unbounded (the engine's pool still bounds it).
    pub fn effective_max_concurrency(&self) -> Option<usize> {
        self.max_concurrency
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Bytes per second a streamed body must keep; [`DEFAULT_MIN_REQUEST_BODY_RATE`] when unset, 0 for none.
    pub fn effective_min_request_body_rate(&self) -> u64 {
        self.min_request_body_rate
            .unwrap_or(DEFAULT_MIN_REQUEST_BODY_RATE)
    }

    /// Largest body accepted; [`DEFAULT_MAX_REQUEST_BODY`] when unset.
    pub fn effective_max_request_body(&self) -> u64 {
        self.max_request_body.unwrap_or(DEFAULT_MAX_REQUEST_BODY)
    }

    /// Requests one instance of a `wasi` guest serves before it is retired.
    pub fn effective_instance_reuse(&self, wasi: crate::WasiVersion) -> u64 {
        match (self.max_instance_reuse, wasi) {
            (Some(n), _) => n,
            (None, crate::WasiVersion::P3) => DEFAULT_P3_INSTANCE_REUSE,
            (None, _) => 1,
        }
    }

    /// Requests one instance of a `wasi` guest serves at once: one unless it is WASI 0.3.
    pub fn effective_instance_concurrency(&self, wasi: crate::WasiVersion) -> usize {
        match wasi {
            crate::WasiVersion::P3 => {
                usize::try_from(self.max_instance_concurrency.unwrap_or(16)).unwrap_or(usize::MAX)
            }
            _ => 1,
        }
    }

    /// How long an idle reusable instance is kept.
    pub fn effective_idle_instance_timeout(&self) -> Duration {
        self.idle_instance_timeout
            .unwrap_or(Duration::from_secs(10))
    }

    /// Every set knob as `name=value`, for log lines.
    pub fn describe(&self) -> String {
        KNOBS
            .iter()
            .filter_map(|k| k.get(self).map(|v| format!("{}={v}", k.name)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// README's knob table, generated from [`KNOBS`] so it cannot drift from the code.
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| knob (flag `--K`, annotation `wasmhttp.io/K`, node TOML `K`) | takes | default | OCI field it overrides | when hit |\n\
         |---|---|---|---|---|\n",
    );
    for knob in KNOBS {
        table.push_str(&format!(
            "| `{}`: {} | {} | {} | {} | {} |\n",
            knob.name,
            knob.doc.trim(),
            knob.form.expected,
            knob.default_text().unwrap_or_else(|| "none".into()),
            knob.oci
                .map_or("—".into(), |f| format!("`linux.resources.{f}`")),
            knob.when_hit,
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_round_trips_through_its_text_form() {
        let mut limits = Limits::default();
        for (name, text) in [
            ("memory", "64Mi"),
            ("memory-per-instance", "16Mi"),
            ("cpus", "0.5"),
            ("cpu-shares", "512"),
            ("fuel-per-request", "1000"),
            ("max-concurrency", "3"),
            ("queue-depth", "0"),
            ("request-timeout", "250ms"),
            ("max-request-body", "1Mi"),
            ("drain-timeout", "2s"),
            ("max-instance-reuse", "100"),
            ("max-instance-concurrency", "4"),
            ("idle-instance-timeout", "30s"),
            ("max-connections", "64"),
            ("min-request-body-rate", "16Ki"),
        ] {
            limits.set(name, text).unwrap();
            let (knob, _) = Knob::named(name).unwrap();
            assert_eq!(knob.get(&limits).as_deref(), Some(text), "{name}");
        }
        assert_eq!(KNOBS.len(), 15, "a new knob needs a line in this test");
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.request_timeout, Some(Duration::from_millis(250)));
        let err = limits.set("queue-depth", "-1").unwrap_err();
        assert!(err.contains("expected an integer of 0 or more"), "{err}");
    }

    #[test]
    fn old_toml_spellings_are_found_and_marked() {
        let (knob, deprecated) = Knob::named("request_timeout").unwrap();
        assert_eq!((knob.name, deprecated), ("request-timeout", true));
        assert!(!Knob::named("request-timeout").unwrap().1);
        assert!(Knob::named("request-timout").is_none());
    }

    #[test]
    fn effective_values() {
        let limits = Limits {
            memory_per_instance: Some(10),
            memory: Some(5),
            ..Limits::default()
        };
        assert_eq!(limits.effective_instance_memory(), Some(5));
        assert_eq!(Limits::default().effective_instance_memory(), None);
        assert_eq!(Limits::default().effective_queue_depth(), 0);
        assert_eq!(
            Limits::default().effective_max_request_body(),
            DEFAULT_MAX_REQUEST_BODY
        );
    }

    /// README's table is this model's output; `WASMHTTP_BLESS=1` rewrites it.
    #[test]
    fn readme_knob_table_is_generated_from_the_model() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- knobs:begin -->\n", "<!-- knobs:end -->");
        let start = readme
            .find(begin)
            .expect("README has the knobs:begin marker")
            + begin.len();
        let stop = readme.find(end).expect("README has the knobs:end marker");
        let table = markdown_table();
        if readme[start..stop] != table {
            if std::env::var_os("WASMHTTP_BLESS").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
                std::fs::write(path, updated).unwrap();
            } else {
                panic!(
                    "README's knob table is out of date: run `WASMHTTP_BLESS=1 cargo test -p wasmhttp-runtime knobs`"
                );
            }
        }
    }
}
