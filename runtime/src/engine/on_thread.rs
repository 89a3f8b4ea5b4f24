//! A value built on a thread of its own while the caller does other work.

use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// A value built on its own thread, waited for on first use.
pub(super) struct OnThread<T> {
    building: Mutex<Option<JoinHandle<wasmtime::Result<T>>>>,
    built: OnceLock<Result<T, String>>,
}

impl<T: Send + 'static> OnThread<T> {
    /// Starts building `name` with `build` on a thread of its own.
    pub(super) fn spawn(
        name: &str,
        build: impl FnOnce() -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<Self, crate::Error> {
        // Unnamed, so it inherits the process's name: with a name of its own, this short-lived thread left
        // that name on the main thread (`/proc/PID/comm` of `wasmhttp run` read `wasmhttp-linker`).
        let handle = std::thread::Builder::new()
            .spawn(build)
            .map_err(|e| crate::Error::Engine(format!("cannot start the {name} thread: {e}")))?;
        Ok(OnThread {
            building: Mutex::new(Some(handle)),
            built: OnceLock::new(),
        })
    }

    /// The value, or why it could not be built; waits for the thread the first time.
    pub(super) fn get(&self) -> Result<&T, &str> {
        self.built
            .get_or_init(|| {
                let handle = self
                    .building
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match handle.map(JoinHandle::join) {
                    Some(Ok(built)) => built.map_err(|e| format!("{e:#}")),
                    Some(Err(_)) => Err("the thread building it panicked".into()),
                    None => unreachable!("the handle is taken once, inside get_or_init"),
                }
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_value_built_on_a_thread_is_waited_for_and_kept() {
        let slow = OnThread::spawn("a slow value", || {
            std::thread::sleep(Duration::from_millis(50));
            Ok(42)
        })
        .unwrap();
        assert_eq!(slow.get(), Ok(&42));
        assert_eq!(slow.get(), Ok(&42), "the second use gets the same value");
    }

    #[test]
    fn a_failed_or_panicked_build_is_an_error_on_every_use() {
        let failed =
            OnThread::<u32>::spawn("a value", || Err(wasmtime::Error::msg("no such import")))
                .unwrap();
        assert_eq!(failed.get(), Err("no such import"));
        assert_eq!(failed.get(), Err("no such import"));
        let panicked = OnThread::<u32>::spawn("a value", || panic!("boom")).unwrap();
        assert_eq!(panicked.get(), Err("the thread building it panicked"));
    }
}
