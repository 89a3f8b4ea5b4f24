//! The one place shim errors become ttrpc status codes.

use containerd_shim::protos::ttrpc::{self, Code};

/// A failed Task API call, classified the way containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request or the bundle is unusable (bad config.json, missing wasm, bad annotation…).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such container.
    #[error("{0}")]
    NotFound(String),
    /// A container with this id exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The container is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The runtime does not offer this at all (exec, checkpoint, ttys).
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else (I/O with the host, the engine).
    #[error("{0}")]
    Internal(String),
}

impl From<ShimError> for ttrpc::Error {
    fn from(error: ShimError) -> Self {
        let code = match &error {
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Internal(_) => Code::INTERNAL,
        };
        tracing::warn!("task call failed: {error}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, error.to_string()))
    }
}

/// Result of a shim-internal operation.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;
