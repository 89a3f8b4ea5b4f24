//! How a container ended, as containerd is told.

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use std::time::SystemTime;
use tokio::sync::watch;

/// The exit status of a task whose Start failed (its port was taken, say): what runc reports for a process
/// that could not be started, so kubelet shows the same `StartError`.
pub const EXIT_START_FAILED: u32 = 128;

/// The exit status of a command stopped at its memory limit: a SIGKILL's, which Kubernetes reads as OOMKilled
/// together with the TaskOOM event.
pub const EXIT_OOM: u32 = 137;

/// How a container ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Exit status as containerd reports it (128 + signal when killed).
    pub code: u32,
    /// When it ended.
    pub at: SystemTime,
}

impl Exit {
    /// The protobuf timestamp of `at`.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// `at` as a protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Where a container's or an exec's exit is kept: recorded once, read and waited for.
pub struct ExitCell(watch::Sender<Option<Exit>>);

impl Default for ExitCell {
    fn default() -> Self {
        ExitCell(watch::channel(None).0)
    }
}

impl ExitCell {
    /// Records an exit with `code` now, if none was; returns it only the first time.
    pub fn record(&self, code: u32) -> Option<Exit> {
        let exit = Exit {
            code,
            at: SystemTime::now(),
        };
        self.0
            .send_if_modified(|current| current.is_none() && current.replace(exit).is_none())
            .then_some(exit)
    }

    /// The exit, once there is one.
    pub fn get(&self) -> Option<Exit> {
        *self.0.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut exit = self.0.subscribe();
        match exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.expect("waited for Some"),
            // The sender lives in `self`, so it cannot be gone while we hold `&self`.
            Err(_) => unreachable!("exit channel closed while its owner exists"),
        }
    }
}
