//! The container's stdio as given to Create: stdout and stderr are fifos (or `file://` paths), none →
//! discarded; stdin is a fifo, which a command reads.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tokio::net::unix::pipe;
use wasmhttp_runtime::GuestOutput;

/// Refuses stdio the confined server could not open, naming the stream and the path, rather than failing
/// later with a bare "permission denied".
pub fn check_reachable(stdin: &str, stdout: &str, stderr: &str) -> crate::error::Result<()> {
    use wasmhttp_runtime::confine::landlock::Access;
    let stdio = [
        ("stdin", stdin, Access::Read),
        ("stdout", stdout, Access::ReadWrite),
        ("stderr", stderr, Access::ReadWrite),
    ];
    for (name, uri, access) in stdio {
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        if !path.is_empty() && !path.contains("://") {
            crate::confine::check_reachable(Path::new(path), access, name)?;
        }
    }
    Ok(())
}

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

/// Opens a command's stdin fifo, which containerd's client writes to (`ctr run`, CRI's attach), for reading,
/// without waiting for a writer: reads wait for one, and the guest reaches the end of its input once every
/// writer that came has closed the fifo. Call it with the async runtime entered (the fifo joins its reactor).
pub fn open_input(path: &Path) -> io::Result<pipe::Receiver> {
    pipe::OpenOptions::new().open_receiver(path)
}

/// Ends a command's stdin for CloseIO when its client never opened the fifo: a writer that opens and closes
/// it at once gives the reader its end of input. (A client still writing keeps it open until it closes.)
pub fn end_input(path: &Path) {
    // ENXIO means nobody reads it any more: the command has ended.
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::time::timeout;

    #[tokio::test]
    async fn stdin_waits_for_a_writer_and_close_io_ends_it_when_none_came() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut input = open_input(&fifo).unwrap();
        let mut buf = [0u8; 16];
        assert!(
            timeout(Duration::from_millis(300), input.read(&mut buf))
                .await
                .is_err(),
            "no writer has come: the read waits, it does not end"
        );
        end_input(&fifo);
        let read = timeout(Duration::from_secs(5), input.read(&mut buf)).await;
        assert_eq!(read.expect("CloseIO ends it").unwrap(), 0);

        drop(input);
        end_input(&fifo); // nobody reads any more: ignored
    }
}
