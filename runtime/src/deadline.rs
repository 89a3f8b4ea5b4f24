//! The request deadline's host side: a timer for guests blocked in host calls. CPU-bound guests are stopped
//! earlier by the epoch deadline their `InstanceGuard` checks on every tick.

use std::time::Duration;

/// The error a guest run ends with when the host-side deadline fires while the guest waits on I/O
/// (CPU-bound guests are stopped earlier by the epoch deadline).
#[derive(Debug)]
pub(crate) struct HostTimeout;

impl std::fmt::Display for HostTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request timeout elapsed while the guest was waiting")
    }
}

impl std::error::Error for HostTimeout {}

/// Bounds a guest future by `timeout` (the caller meters it).
pub(crate) async fn with_timeout<R>(
    timeout: Option<Duration>,
    run: impl std::future::Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    match timeout {
        // A little slack lets the epoch deadline (which knows the guest was computing) fire first.
        Some(t) => tokio::time::timeout(t + Duration::from_millis(20), run)
            .await
            .unwrap_or_else(|_| Err(wasmtime::Error::new(HostTimeout))),
        None => run.await,
    }
}
