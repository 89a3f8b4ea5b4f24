//! Errors from loading and starting guests. Each message names the binary (or file) at fault.

/// What went wrong loading, linking or starting a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly module or component.
    #[error("{name} is not a WebAssembly binary: {detail}")]
    NotWasm {
        /// The binary's name.
        name: String,
        /// What was found instead.
        detail: String,
    },
    /// Cranelift or the validator rejected the binary (with every WebAssembly feature wasmhttp supports).
    #[error("{name} is not valid WebAssembly: {detail}")]
    Invalid {
        /// The binary's name.
        name: String,
        /// The validator's message.
        detail: String,
    },
    /// Valid wasm, but neither an HTTP service nor a command.
    #[error(
        "{name} exports {}; wasmhttp runs {}",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") },
        crate::classify::SUPPORTED
    )]
    Unsupported {
        /// The binary's name.
        name: String,
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The guest imports something the runtime does not provide.
    #[error("{name} cannot be linked: {detail}")]
    Link {
        /// The binary's name.
        name: String,
        /// The linker's message (which import is missing).
        detail: String,
    },
    /// The limits leave the guest no room to start.
    #[error("{name} cannot start under these limits: {detail}")]
    Limits {
        /// The binary's name.
        name: String,
        /// Which limit, and what the guest needs.
        detail: String,
    },
    /// A granted capability is unusable.
    #[error("{0}")]
    Capability(String),
    /// The engine could not be set up (bad engine configuration, cache directory unusable).
    #[error("engine setup failed: {0}")]
    Engine(String),
}
