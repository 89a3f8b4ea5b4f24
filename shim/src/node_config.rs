//! Node configuration: engine settings and default limits an operator sets once per node.
//!
//! It comes from containerd's runtime options for this runtime (CRI's `runtimeoptions.v1.Options`:
//! `ConfigPath` or `ConfigBody` in `[...runtimes.wasmhttp.options]`, or `ctr run --runtime-config-path`),
//! else from [`DEFAULT_PATH`] when that file exists, else the built-in defaults below. A file that cannot
//! be parsed fails Create with its path and line.
//!
//! ```toml
//! [engine]                      # read by the first container of a shim process (the engine is shared)
//! max_instances = 256           # pooling allocator slots
//! max_instance_memory = "1Gi"   # largest linear memory one instance may reserve
//! cache_dir = "/var/lib/wasmhttp/cache"
//! cache_max_size = "512Mi"
//!
//! [defaults]                    # used where the spec and the annotations say nothing
//! memory = "512Mi"              # when linux.resources.memory.limit is unset
//! request_timeout = "30s"
//! queue_depth = 0
//! max_request_body = "16Mi"
//! drain_timeout = "10s"         # how long SIGTERM lets in-flight requests finish
//! # memory_per_instance = "64Mi"
//! # fuel_per_request = 1000000000
//! ```

use crate::error::{Result, ShimError};
use containerd_shim::protos::protobuf::CodedInputStream;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmhttp_runtime::{EngineConfig, Limits, parse_duration, parse_memory};

/// Where the node configuration is read from when containerd passes none.
pub const DEFAULT_PATH: &str = "/etc/wasmhttp/config.toml";
/// Where compiled code is cached unless the configuration or `WASMHTTP_CACHE_DIR` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wasmhttp/cache";
/// The memory a container may use when its spec sets no `memory.limit`.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// The request timeout when no annotation sets one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM lets in-flight requests finish.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// The type containerd's CRI plugin (and `ctr --runtime-config-path`) uses for non-runc runtime options.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The node configuration, resolved.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Settings of the shared engine.
    pub engine: EngineConfig,
    /// Limits a container starts from before its spec and annotations apply.
    pub defaults: Limits,
    /// How long SIGTERM lets in-flight requests finish.
    pub drain_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeFile::default().resolve()
    }
}

/// The file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    defaults: DefaultsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    max_instances: Option<u32>,
    max_instance_memory: Option<Size>,
    cache_dir: Option<PathBuf>,
    cache_max_size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsSection {
    memory: Option<Size>,
    memory_per_instance: Option<Size>,
    request_timeout: Option<Time>,
    queue_depth: Option<usize>,
    max_request_body: Option<Size>,
    fuel_per_request: Option<u64>,
    drain_timeout: Option<Time>,
}

/// A size such as `"64Mi"` (or a plain number of bytes).
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(t) => parse_memory(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration such as `"30s"`.
#[derive(Debug, Clone, Copy)]
struct Time(Duration);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Time)
            .map_err(serde::de::Error::custom)
    }
}

impl NodeFile {
    fn resolve(self) -> NodeConfig {
        let mut engine = EngineConfig::default();
        let e = self.engine;
        engine.max_instances = e.max_instances.unwrap_or(engine.max_instances);
        engine.max_instance_memory = e
            .max_instance_memory
            .map_or(engine.max_instance_memory, |s| s.0);
        engine.cache_max_bytes = e.cache_max_size.map_or(engine.cache_max_bytes, |s| s.0);
        engine.cache_dir = Some(e.cache_dir.unwrap_or_else(|| {
            std::env::var_os("WASMHTTP_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or(DEFAULT_CACHE_DIR.into())
        }));
        let d = self.defaults;
        let defaults = Limits {
            memory_total: Some(d.memory.map_or(DEFAULT_MEMORY, |s| s.0)),
            memory_per_instance: d.memory_per_instance.map(|s| s.0),
            request_timeout: Some(d.request_timeout.map_or(DEFAULT_REQUEST_TIMEOUT, |t| t.0)),
            queue_depth: d.queue_depth.unwrap_or(0),
            max_request_body: d
                .max_request_body
                .map_or(Limits::default().max_request_body, |s| s.0),
            fuel_per_request: d.fuel_per_request,
            ..Limits::default()
        };
        NodeConfig {
            engine,
            defaults,
            drain_timeout: d.drain_timeout.map_or(DEFAULT_DRAIN, |t| t.0),
        }
    }
}

/// Parses configuration text; `origin` names it in errors (a path, or "runtime options ConfigBody").
pub fn parse(text: &str, origin: &str) -> Result<NodeConfig> {
    let file: NodeFile = toml::from_str(text).map_err(|e| {
        let line = unknown_key_line(text, e.message()).or_else(|| {
            e.span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1))
        });
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        ShimError::InvalidArgument(format!(
            "node configuration {origin}{at}: {}",
            e.message().trim()
        ))
    })?;
    Ok(file.resolve())
}

/// serde reports an unknown key at its table; the operator wants the key's own line.
fn unknown_key_line(text: &str, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
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

/// The node configuration for a Create whose runtime options are `options`.
pub fn for_create(options: Option<&Any>) -> Result<NodeConfig> {
    let (path, body) = match options.filter(|o| !o.value.is_empty()) {
        Some(any) => runtime_options(any)?,
        None => (String::new(), String::new()),
    };
    if !body.is_empty() {
        return parse(&body, "runtime options ConfigBody");
    }
    if !path.is_empty() {
        return read(Path::new(&path));
    }
    if Path::new(DEFAULT_PATH).exists() {
        return read(Path::new(DEFAULT_PATH));
    }
    Ok(NodeConfig::default())
}

/// Decodes `runtimeoptions.v1.Options { type_url = 1; config_path = 2; config_body = 3; }` (all strings).
fn runtime_options(any: &Any) -> Result<(String, String)> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIME_OPTIONS_TYPE {
        return Err(ShimError::InvalidArgument(format!(
            "runtime options of type {:?} are not understood; wasmhttp takes {RUNTIME_OPTIONS_TYPE} \
             (ConfigPath or ConfigBody)",
            any.type_url
        )));
    }
    let bad = |e: String| ShimError::InvalidArgument(format!("runtime options: {e}"));
    let mut input = CodedInputStream::from_bytes(&any.value);
    let (mut path, mut body) = (String::new(), String::new());
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .map_err(|e| bad(e.to_string()))?
    {
        if tag & 7 != 2 {
            return Err(bad(format!("unexpected field tag {tag}")));
        }
        let value = input.read_string().map_err(|e| bad(e.to_string()))?;
        match tag >> 3 {
            2 => path = value,
            3 => body = value,
            _ => {}
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedOutputStream;

    #[test]
    fn defaults_without_a_file() {
        let config = NodeConfig::default();
        assert_eq!(config.defaults.memory_total, Some(DEFAULT_MEMORY));
        assert_eq!(
            config.defaults.request_timeout,
            Some(DEFAULT_REQUEST_TIMEOUT)
        );
        assert_eq!(config.drain_timeout, DEFAULT_DRAIN);
    }

    #[test]
    fn the_shipped_example_spells_out_the_defaults() {
        let example = include_str!("../../examples/containerd/wasmhttp-config.toml");
        let parsed = parse(example, "wasmhttp-config.toml").unwrap();
        let defaults = NodeConfig::default();
        assert_eq!(parsed.defaults, defaults.defaults);
        assert_eq!(parsed.drain_timeout, defaults.drain_timeout);
        assert_eq!(parsed.engine.max_instances, defaults.engine.max_instances);
        assert_eq!(
            parsed.engine.max_instance_memory,
            defaults.engine.max_instance_memory
        );
        assert_eq!(
            parsed.engine.cache_max_bytes,
            defaults.engine.cache_max_bytes
        );
    }

    #[test]
    fn a_file_sets_engine_and_defaults() {
        let config = parse(
            "[engine]\nmax_instances = 8\ncache_dir = \"/tmp/c\"\ncache_max_size = \"1Gi\"\n\
             [defaults]\nmemory = \"64Mi\"\nrequest_timeout = \"2s\"\nqueue_depth = 3\ndrain_timeout = \"1s\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.engine.max_instances, 8);
        assert_eq!(config.engine.cache_dir, Some(PathBuf::from("/tmp/c")));
        assert_eq!(config.engine.cache_max_bytes, 1 << 30);
        assert_eq!(config.defaults.memory_total, Some(64 << 20));
        assert_eq!(
            config.defaults.request_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.defaults.queue_depth, 3);
        assert_eq!(config.drain_timeout, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_origin_and_line() {
        let err = parse("[defaults]\n\nmemory = \"64Xi\"\n", "/etc/n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/n.toml:3"), "{err}");
        assert!(err.contains("unknown unit"), "{err}");
        let err = parse("[engine]\nmax_instancez = 1\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n.toml:2") && err.contains("max_instancez"),
            "{err}"
        );
        let err = parse("[defaults\n", "n.toml").unwrap_err().to_string();
        assert!(err.contains("n.toml:1"), "{err}");
    }

    #[test]
    fn runtime_options_carry_a_path_or_a_body() {
        let encode = |path: &str, body: &str| {
            let mut value = Vec::new();
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "").unwrap();
            out.write_string(2, path).unwrap();
            out.write_string(3, body).unwrap();
            out.flush().unwrap();
            drop(out);
            Any {
                type_url: RUNTIME_OPTIONS_TYPE.into(),
                value,
                ..Default::default()
            }
        };
        let config = for_create(Some(&encode("", "[defaults]\nqueue_depth = 7\n"))).unwrap();
        assert_eq!(config.defaults.queue_depth, 7);
        let err = for_create(Some(&encode("/nonexistent/wasmhttp.toml", "")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/wasmhttp.toml"), "{err}");
        let wrong = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![1],
            ..Default::default()
        };
        assert!(
            for_create(Some(&wrong))
                .unwrap_err()
                .to_string()
                .contains("not understood")
        );
    }
}
