//! How a container ended, as containerd is told.

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use std::time::SystemTime;

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
