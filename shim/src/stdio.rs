//! The container's stdout/stderr as given to Create: fifos (or `file://` paths); none → discarded.

use std::fs::OpenOptions;
use wasmhttp_runtime::GuestOutput;

/// Opens one output stream. Opening a fifo blocks until containerd's reader is there, so call it off the
/// async executor.
pub fn open_output(path: &str) -> std::io::Result<GuestOutput> {
    if path.is_empty() {
        return Ok(GuestOutput::discard());
    }
    if let Some(file) = path.strip_prefix("file://") {
        return Ok(GuestOutput::new(
            OpenOptions::new().create(true).append(true).open(file)?,
        ));
    }
    if path.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("log destination {path} is not supported (use a fifo or file://)"),
        ));
    }
    Ok(GuestOutput::new(OpenOptions::new().write(true).open(path)?))
}
