//! The wasmhttp runtime: runs WASI HTTP services and commands under hard limits enforced inside wasmtime.
//!
//! It knows nothing about containerd or OCI. Callers hand it wasm bytes ([`Source`]), a [`Limits`] value
//! and a [`Capabilities`] value, and either serve HTTP ([`Service`]) or run a command ([`run_command`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wasmhttp_runtime::*;
//! let runtime = Runtime::new(EngineConfig::default())?;
//! let app = runtime.load(&Source::from_file("hello.wasm".as_ref())?)?;
//! let limits = Limits { memory: Some(64 << 20), ..Limits::default() };
//! let service = Service::new(&runtime, &app, limits, Capabilities::default(), GuestOutput::stdout(), GuestOutput::stderr())?;
//! let handle = service.serve(std::net::TcpListener::bind("127.0.0.1:8080")?)?;
//! handle.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod admission;
mod body_pace;
mod cache;
mod capabilities;
mod classify;
mod client_gate;
mod command;
pub mod confine;
mod cpu;
mod deadline;
mod engine;
mod error;
mod handler;
mod host_memory;
mod identity;
mod instance;
pub mod knobs;
mod metered;
pub mod outbound;
mod output;
pub mod pagemap;
pub mod precompiled;
mod preread;
pub mod prometheus;
mod reuse;
mod service;
mod source;
mod stalled_write;
mod stats;
pub mod telemetry;
mod workers;

pub use cache::CompileCache;
pub use capabilities::{
    ALLOWED_HOST_FORM, Capabilities, Preopen, dedup_env, parse_allowed_host, parse_env_var,
};
pub use classify::{WasiVersion, WasmKind};
pub use command::{
    Charge, CommandExit, CommandIo, EXIT_TIMEOUT, EXIT_TRAP, run_command, run_command_charged,
};
pub use engine::{EngineConfig, Loaded, Origin, Runtime};
pub use error::Error;
pub use host_memory::ChargingAllocator;
pub use identity::{FileUser, reset_thread_file_rights};
pub use knobs::{DEFAULT_CPU_SHARES, DEFAULT_MAX_REQUEST_BODY, KNOBS, Knob, Layers, Limits, fold};
pub use outbound::{Dialer, IpRange, SharedDialer};
pub use output::GuestOutput;
pub use service::{HttpOptions, Service, ServiceHandle};
pub use source::Source;
pub use stats::{FailureCause, HistogramSnapshot, ProcessMemory, Rejection, StatsSnapshot};
