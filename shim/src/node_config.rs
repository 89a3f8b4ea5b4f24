//! Node configuration: engine settings, default limits and ceilings an operator sets once per node.
//!
//! It comes from containerd's runtime options for this runtime (CRI's `runtimeoptions.v1.Options`:
//! `ConfigPath` or `ConfigBody` in `[...runtimes.wasmhttp.options]`, or `ctr run --runtime-config-path`),
//! else from [`DEFAULT_PATH`] when that file exists, else the built-in defaults. A file that cannot be
//! parsed fails Create with its path, line and key.
//!
//! ```toml
//! [engine]                      # read by the first container of a shim process (the engine is shared)
//! max-instances = 256           # pooling allocator slots
//! max-instance-memory = "1Gi"   # largest linear memory one instance may reserve
//! cache-dir = "/var/lib/wasmhttp/cache"
//! cache-max-size = "512Mi"
//! slot-keep-resident = "64Ki"   # written pages a free instance slot keeps for the next instance
//! max-component-size = "256Mi"  # the largest wasm file or layer a container may name
//! precompiled-signers = []      # keys whose signed precompiled code in an image runs uncompiled
//!
//! [defaults]                    # any knob (README's table): used where the spec and annotations say nothing
//! memory = "512Mi"
//! request-timeout = "30s"
//!
//! [ceilings]                    # any knob: the most a wasmhttp.io/ annotation may ask for
//! max-concurrency = 64
//!
//! [security]
//! image-annotation = "own"      # wasmhttp.io/image may name only the container's own image ("any": any image)
//! deny-outbound = ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254"]  # no guest request reaches these
//! seccomp = "enforce"           # the shim server's syscall filter: "enforce", "log" (dmesg) or "off"
//! landlock = "enforce"          # confine the shim server's file access (see crate::confine): or "off"
//! host-paths = ["/var/lib/kubelet", "/run/containerd/fifo", "/var/log/wasmhttp"]  # host paths it may also use
//! max-file-mounts-size = "16Mi" # read-only file mounts (a subPath) are copied: at most this much a container
//!
//! [metrics]                     # Prometheus /metrics in each pod's network namespace: see crate::scrape
//! port = 9464
//!
//! [tracing]                     # OpenTelemetry request traces over OTLP/HTTP: see crate::traces
//! endpoint = "http://127.0.0.1:4318"
//! ```
//!
//! Keys are the knobs' names. The `snake_case` spellings of earlier releases (`request_timeout`) are still
//! read, with a deprecation warning, for one release.

use crate::containerd_api::RuntimeOptions;
use crate::error::{Result, ShimError};
use crate::scrape::MetricsConfig;
use crate::traces::TracingSection;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use std::path::{Path, PathBuf};
use wasmhttp_runtime::confine::SeccompMode;
use wasmhttp_runtime::knobs::value::{count, size};
use wasmhttp_runtime::precompiled::TrustedKey;
use wasmhttp_runtime::{EngineConfig, IpRange, Knob, Limits};

/// Where the node configuration is read from when containerd passes none.
pub const DEFAULT_PATH: &str = "/etc/wasmhttp/config.toml";
/// Where compiled code is cached unless the configuration or `WASMHTTP_CACHE_DIR` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wasmhttp/cache";
/// The type containerd's CRI plugin (and `ctr --runtime-config-path`) uses for non-runc runtime options.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The node configuration, resolved.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Settings of the shared engine.
    pub engine: EngineConfig,
    /// `[defaults]`: knobs a container starts from before its spec and annotations apply.
    pub defaults: Limits,
    /// `[ceilings]`: the most an annotation may ask for.
    pub ceilings: Limits,
    /// `[security]`: what the node lets a pod author choose beyond limits.
    pub security: Security,
    /// `[metrics]`: where pods serve Prometheus metrics.
    pub metrics: MetricsConfig,
    /// `[tracing]`: where request spans go.
    pub tracing: TracingSection,
}

/// The `[security]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// `image-annotation = "any"`: `wasmhttp.io/image` may name any image in the namespace, not only the
    /// container's own. Off by default: the annotation would let a pod run code from images its pull
    /// credentials never reached.
    pub any_image_annotation: bool,
    /// `deny-outbound`: address ranges no guest's outbound request may reach, whatever a name resolves to.
    pub deny_outbound: Vec<IpRange>,
    /// `seccomp`: the shim server's system-call filter. Read when the shim process starts (the first
    /// container of a pod decides), as the engine's settings are.
    pub seccomp: SeccompMode,
    /// `landlock = "enforce"`: the shim server reaches only the files [`crate::confine`] names. Read when the
    /// shim process starts.
    pub landlock: bool,
    /// `host-paths`: host directories (or files) the shim server may read and write besides containerd's
    /// own, such as kubelet's pod directories, `hostPath` volumes and log files; containers naming anything
    /// else are refused. Read when the shim process starts.
    pub host_paths: Vec<PathBuf>,
    /// `max-file-mounts-size`: the most a container's read-only file mounts may hold together. A WASI guest
    /// is given directories only, so such files are copied into the container's bundle (on containerd's
    /// state directory, node memory when that is a tmpfs) at Create; see `crate::bundle::file_mounts`.
    pub max_file_mounts_size: u64,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            any_image_annotation: false,
            deny_outbound: wasmhttp_runtime::outbound::default_denied_ranges(),
            seccomp: SeccompMode::default(),
            landlock: true,
            host_paths: DEFAULT_HOST_PATHS.iter().map(PathBuf::from).collect(),
            max_file_mounts_size: DEFAULT_MAX_FILE_MOUNTS_SIZE,
        }
    }
}

/// `host-paths` unless configured: kubelet's pod directories (volumes, `/etc/hosts`, termination logs),
/// `ctr`'s default fifo directory and [`LOG_DIR`].
pub const DEFAULT_HOST_PATHS: &[&str] = &["/var/lib/kubelet", "/run/containerd/fifo", LOG_DIR];

/// `max-file-mounts-size` unless configured: room for a few ConfigMap and Secret keys (1 MiB at most each).
pub const DEFAULT_MAX_FILE_MOUNTS_SIZE: u64 = 16 << 20;

/// A directory for `ctr run --log-uri file://…` logs, which the shim creates when `host-paths` lists it.
pub const LOG_DIR: &str = "/var/log/wasmhttp";

impl Default for NodeConfig {
    fn default() -> Self {
        parse("", "built-in defaults").expect("the empty configuration is valid")
    }
}

/// Parses configuration text; `origin` names it in errors (a path, or "runtime options ConfigBody").
pub fn parse(text: &str, origin: &str) -> Result<NodeConfig> {
    let fail = |line: Option<usize>, message: String| {
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        ShimError::InvalidArgument(format!("node configuration {origin}{at}: {message}"))
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        fail(line, e.message().trim().to_string())
    })?;
    let mut config = NodeConfig {
        // A shim process runs nothing but its pod's guests.
        engine: EngineConfig {
            charge_whole_process: true,
            ..EngineConfig::default()
        },
        defaults: Limits::default(),
        ceilings: Limits::default(),
        security: Security::default(),
        metrics: MetricsConfig::default(),
        tracing: TracingSection::default(),
    };
    for (section, value) in &table {
        let Some(entries) = value.as_table() else {
            return Err(fail(
                line_of(text, None, section),
                format!(
                    "`{section}` must be a table: [engine], [defaults], [ceilings], [security], [metrics] or [tracing]"
                ),
            ));
        };
        for (key, value) in entries {
            let line = line_of(text, Some(section), key);
            let text_value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                // A list is read as its comma-separated items.
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            let result = match section.as_str() {
                "engine" => set_engine(&mut config.engine, key, &text_value),
                "security" => set_security(&mut config.security, key, &text_value),
                "metrics" => crate::scrape::set_config(&mut config.metrics, key, &text_value),
                "tracing" => crate::traces::set_config(&mut config.tracing, key, &text_value),
                "defaults" | "ceilings" => {
                    let limits = if section == "defaults" {
                        &mut config.defaults
                    } else {
                        &mut config.ceilings
                    };
                    match Knob::named(key) {
                        Some((knob, deprecated)) => {
                            if deprecated {
                                warn_deprecated(origin, section, key, knob.name);
                            }
                            knob.set(limits, &text_value)
                        }
                        None => Err(format!(
                            "unknown key `{key}` in [{section}] (knobs: {})",
                            wasmhttp_runtime::KNOBS
                                .iter()
                                .map(|k| k.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    }
                }
                _ => Err(format!(
                    "unknown section [{section}] (sections: engine, defaults, ceilings, security, metrics, tracing)"
                )),
            };
            result.map_err(|e| fail(line, format!("[{section}] {key}: {e}")))?;
        }
    }
    if config.engine.cache_dir.is_none() {
        config.engine.cache_dir = Some(
            std::env::var_os("WASMHTTP_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or(DEFAULT_CACHE_DIR.into()),
        );
    }
    Ok(config)
}

fn set_engine(
    engine: &mut EngineConfig,
    key: &str,
    value: &str,
) -> std::result::Result<(), String> {
    let kebab = key.replace('_', "-");
    match kebab.as_str() {
        "max-instances" => {
            engine.max_instances = count::parse(value)
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{value:?}: expected a positive integer"))?
        }
        "max-instance-memory" => engine.max_instance_memory = parse_size(value)?,
        "cache-max-size" => engine.cache_max_bytes = parse_size(value)?,
        "cache-dir" => engine.cache_dir = Some(PathBuf::from(value)),
        "slot-keep-resident" => engine.slot_keep_resident = parse_size(value)?,
        "max-component-size" => engine.max_component_size = parse_size(value)?,
        "precompiled-signers" => {
            engine.precompiled_signers = value
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(TrustedKey::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| {
                    format!(
                        "{e}: expected Ed25519 public keys as `wasmhttp image keygen` prints them"
                    )
                })?
        }
        _ => {
            return Err(format!(
                "unknown key `{key}` in [engine] (keys: max-instances, max-instance-memory, cache-dir, \
                 cache-max-size, slot-keep-resident, max-component-size, precompiled-signers)"
            ));
        }
    }
    if kebab != key {
        warn_deprecated("", "engine", key, &kebab);
    }
    Ok(())
}

/// A byte size, its error saying the form expected.
fn parse_size(value: &str) -> std::result::Result<u64, String> {
    size::parse(value).map_err(|e| format!("{e}: expected {}", size::FORM.expected))
}

fn set_security(
    security: &mut Security,
    key: &str,
    value: &str,
) -> std::result::Result<(), String> {
    match (key, value) {
        ("image-annotation", "own") => security.any_image_annotation = false,
        ("image-annotation", "any") => security.any_image_annotation = true,
        ("image-annotation", _) => return Err(format!("{value:?}: expected \"own\" or \"any\"")),
        ("seccomp", _) => security.seccomp = value.parse()?,
        ("landlock", "enforce") => security.landlock = true,
        ("landlock", "off") => security.landlock = false,
        ("landlock", _) => return Err(format!("{value:?}: expected \"enforce\" or \"off\"")),
        ("host-paths", _) => {
            security.host_paths = value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    if p.starts_with('/') && !p.contains('\n') {
                        Ok(PathBuf::from(p))
                    } else {
                        Err(format!("{p:?}: expected absolute paths"))
                    }
                })
                .collect::<std::result::Result<_, _>>()?
        }
        ("max-file-mounts-size", _) => security.max_file_mounts_size = parse_size(value)?,
        ("deny-outbound", _) => {
            security.deny_outbound = value
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()?
        }
        _ => {
            return Err(format!(
                "unknown key `{key}` in [security] (keys: image-annotation, deny-outbound, seccomp, landlock, \
                 host-paths, max-file-mounts-size)"
            ));
        }
    }
    Ok(())
}

fn warn_deprecated(origin: &str, section: &str, old: &str, new: &str) {
    tracing::warn!(
        configuration = %origin,
        "[{section}] {old} is deprecated and will be removed in the next release: spell it {new}"
    );
}

/// The line of `key` (in `[section]`, or at the top when `None`), for errors: toml's own errors point at the
/// table, and the operator wants the key's line.
fn line_of(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut in_section = section.is_none();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with('[') {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            if section.is_none() && name == key {
                return Some(index + 1);
            }
            in_section = section == Some(name);
            continue;
        }
        let is_key = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if in_section && is_key {
            return Some(index + 1);
        }
    }
    None
}

/// Reads the configuration file at `path`.
pub fn read(path: &Path) -> Result<NodeConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "node configuration {}: cannot read: {e}",
            path.display()
        ))
    })?;
    parse(&text, &path.display().to_string())
}

/// Where a node configuration comes from.
enum Source {
    Body(String),
    File(PathBuf),
    BuiltIn,
}

fn source(options: Option<&Any>) -> Result<Source> {
    let (path, body) = match options.filter(|o| !o.value.is_empty()) {
        Some(any) if is_sandbox_endpoint_only(any) => (String::new(), String::new()),
        Some(any) => runtime_options(any)?,
        None => (String::new(), String::new()),
    };
    Ok(if !body.is_empty() {
        Source::Body(body)
    } else if !path.is_empty() {
        Source::File(path.into())
    } else if Path::new(DEFAULT_PATH).exists() {
        Source::File(DEFAULT_PATH.into())
    } else {
        Source::BuiltIn
    })
}

/// The node configuration for a Create whose runtime options are `options`.
pub fn for_create(options: Option<&Any>) -> Result<NodeConfig> {
    match source(options)? {
        Source::Body(body) => parse(&body, "runtime options ConfigBody"),
        Source::File(path) => read(&path),
        Source::BuiltIn => Ok(NodeConfig::default()),
    }
}

/// The file [`for_create`] reads for `options`, if it reads one (whether or not it parses).
pub fn file_for(options: Option<&Any>) -> Option<PathBuf> {
    match source(options) {
        Ok(Source::File(path)) => Some(path),
        _ => None,
    }
}

/// Whether `any` is containerd's `runtimeoptions.v1.Options` (with or without a type URL prefix), the one
/// runtime options type wasmhttp reads.
pub fn is_runtime_options(any: &Any) -> bool {
    type_name(any) == RUNTIME_OPTIONS_TYPE
}

/// The message type an `Any` holds: its type URL without the prefix (`types.example/…`), if any.
fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Whether `any` is the runc options containerd 2.x's client sends for a task of a Sandbox API pod whose
/// runtime has no options: it puts the sandbox's task API endpoint there for any runtime
/// (`WithTaskAPIEndpoint`), and containerd then passes them instead of the runtime's (empty) options. Only
/// its `task_api_address` (12) and `task_api_version` (13) may be set; containerd itself acts on them.
fn is_sandbox_endpoint_only(any: &Any) -> bool {
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
    type_name(any) == "containerd.runc.v1.Options"
        && Empty::parse_from_bytes(&any.value).is_ok_and(|fields| {
            fields
                .special_fields
                .unknown_fields()
                .iter()
                .all(|(number, _)| number == 12 || number == 13)
        })
}

/// The `ConfigPath` and `ConfigBody` of containerd's `runtimeoptions.v1.Options`.
fn runtime_options(any: &Any) -> Result<(String, String)> {
    if !is_runtime_options(any) {
        return Err(ShimError::InvalidArgument(format!(
            "runtime options of type {:?} are not understood; wasmhttp takes {RUNTIME_OPTIONS_TYPE} \
             (ConfigPath or ConfigBody)",
            any.type_url
        )));
    }
    let options = <RuntimeOptions as prost::Message>::decode(any.value.as_slice())
        .map_err(|e| ShimError::InvalidArgument(format!("runtime options: {e}")))?;
    Ok((options.config_path, options.config_body))
}

#[cfg(test)]
mod tests;
