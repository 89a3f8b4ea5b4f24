//! A container's limits after Create: Update changes them, Stats and the metrics read them.

use super::{Active, Container, State};
use crate::error::{Result, ShimError};
use crate::limits::oci_update;
use oci_spec::runtime::LinuxResources;
use wasmhttp_runtime::{Limits, StatsSnapshot, fold};

impl Container {
    /// Applies new OCI resources to a service's next requests, or to a container's run once it starts.
    pub fn update(&self, resources: &LinuxResources) -> Result<Limits> {
        // The state before the limits, as Start takes them.
        let state = self.lock();
        let refused = |why: &str| {
            Err(ShimError::FailedPrecondition(format!(
                "update: container {} {why}",
                self.id
            )))
        };
        match &*state {
            State::Running(Active::Command(..)) | State::Paused(Active::Command(..)) => {
                return refused(
                    "runs a command (wasi:cli/run), whose limits are fixed when it starts; a \
                     service applies new limits to its next requests",
                );
            }
            // As containerd's runc shim answers: nothing runs that the limits could apply to.
            State::Stopped => return refused("has stopped"),
            _ => {}
        }
        let mut guard = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let (layers, limits) = &mut *guard;
        let mut updated = layers.clone();
        oci_update(&mut updated.oci, resources)
            .map_err(|e| ShimError::InvalidArgument(format!("update: {e}")))?;
        *limits = fold(&updated).map_err(|r| {
            ShimError::InvalidArgument(format!("update: {}", crate::annotations::refusal(&r)))
        })?;
        *layers = updated;
        // Not started yet: Start runs it under these.
        if let State::Running(Active::Service(h)) | State::Paused(Active::Service(h)) = &*state {
            h.update_limits(limits.clone());
        }
        Ok(limits.clone())
    }

    /// The limits in force now.
    pub(super) fn limits(&self) -> Limits {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Usage figures, the limits in force and the code size, for Stats.
    pub fn usage(&self) -> (StatsSnapshot, Limits, u64) {
        let stats = match &*self.lock() {
            State::Running(Active::Service(h)) | State::Paused(Active::Service(h)) => h.stats(),
            _ => self
                .final_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default(),
        };
        (stats, self.limits(), self.code_size)
    }
}

impl wasmhttp_runtime::prometheus::Observed for Container {
    fn observe(&self) -> (StatsSnapshot, Limits) {
        let (stats, limits, _) = self.usage();
        (stats, limits)
    }
}
