//! The shim's one engine, shared by all its containers and built from the first Create's node configuration.
//!
//! Building it takes ~2 ms (the pool's slots, the WASI linkers), which a Create would otherwise wait for. So the
//! shim server starts building it on a thread of its own as soon as it starts, with the node configuration a
//! Create without runtime options gets, while containerd is still connecting; the first Create uses it if its
//! own configuration asks for the same engine settings, and builds another if not.

use crate::error::{Result, ShimError};
use crate::node_config;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use wasmhttp_runtime::{EngineConfig, Runtime};

/// The engine of this shim process, once a Create has asked for it.
pub struct SharedRuntime {
    runtime: OnceLock<Runtime>,
    early: Mutex<Option<EarlyBuild>>,
}

/// An engine being built before anyone asked, and the settings it is built with.
struct EarlyBuild {
    config: EngineConfig,
    building: JoinHandle<std::result::Result<Runtime, wasmhttp_runtime::Error>>,
}

impl SharedRuntime {
    /// Starts building the engine that a Create without runtime options would get (from
    /// `/etc/wasmhttp/config.toml` or the defaults). A configuration that does not read is left for the
    /// Create to report.
    pub fn build_early() -> Self {
        Self::build_early_with(node_config::for_create(None).ok().map(|node| node.engine))
    }

    fn build_early_with(config: Option<EngineConfig>) -> Self {
        let early = config.and_then(|config| {
            let settings = config.clone();
            let building = std::thread::Builder::new()
                .name("wasmhttp-engine".into())
                .spawn(move || Runtime::new(settings))
                .ok()?;
            Some(EarlyBuild { config, building })
        });
        SharedRuntime {
            runtime: OnceLock::new(),
            early: Mutex::new(early),
        }
    }

    /// The shared engine; the first call decides its settings.
    pub fn get_or_build(&self, engine: &EngineConfig) -> Result<Runtime> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.clone());
        }
        let early = self.early.lock().unwrap_or_else(|e| e.into_inner()).take();
        let runtime = match early {
            Some(early) if early.config == *engine => match early.building.join() {
                Ok(Ok(runtime)) => runtime,
                // Built again here, so that the failure is this Create's error.
                _ => build(engine)?,
            },
            // Other settings: the early engine is dropped when its thread is done with it.
            _ => build(engine)?,
        };
        Ok(self.runtime.get_or_init(|| runtime).clone())
    }
}

/// Builds the engine; a failure names the node settings that size it, the usual cause (a pool of
/// `max-instances` slots of `max-instance-memory` each that does not fit the address space).
fn build(engine: &EngineConfig) -> Result<Runtime> {
    Runtime::new(engine.clone()).map_err(|e| {
        ShimError::Internal(format!(
            "{e} (the node configuration's [engine] max-instances = {}, max-instance-memory = {})",
            engine.max_instances,
            wasmhttp_runtime::knobs::value::size::show(engine.max_instance_memory)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_instances: u32) -> EngineConfig {
        EngineConfig {
            max_instances,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn an_engine_that_cannot_be_built_names_the_settings_that_size_it() {
        let err = SharedRuntime::build_early_with(None)
            .get_or_build(&settings(u32::MAX))
            .err()
            .expect("4 billion slots do not fit")
            .to_string();
        assert!(
            err.contains("[engine] max-instances = 4294967295, max-instance-memory = 1Gi"),
            "{err}"
        );
    }

    #[test]
    fn a_create_asking_for_the_early_settings_gets_the_early_engine() {
        let early = Runtime::new(settings(8)).unwrap();
        let handed_over = early.clone();
        let shared = SharedRuntime {
            runtime: OnceLock::new(),
            early: Mutex::new(Some(EarlyBuild {
                config: settings(8),
                building: std::thread::spawn(move || Ok(handed_over)),
            })),
        };
        let runtime = shared.get_or_build(&settings(8)).unwrap();
        assert!(
            std::ptr::eq(runtime.engine(), early.engine()),
            "the same engine"
        );
    }

    #[test]
    fn an_early_build_on_its_thread_is_taken_by_a_create_asking_for_its_settings() {
        let shared = SharedRuntime::build_early_with(Some(settings(8)));
        let runtime = shared.get_or_build(&settings(8)).unwrap();
        assert_eq!(runtime.config(), &settings(8));
        assert!(
            shared.early.lock().unwrap().is_none(),
            "the early build was taken"
        );
    }

    #[test]
    fn a_create_asking_for_other_settings_gets_an_engine_with_its_own() {
        let shared = SharedRuntime::build_early_with(Some(settings(8)));
        let runtime = shared.get_or_build(&settings(4)).unwrap();
        assert_eq!(runtime.config(), &settings(4));
        // Later Creates share the first one's engine, whatever they ask for.
        let again = shared.get_or_build(&settings(8)).unwrap();
        assert_eq!(again.config(), &settings(4));
    }

    #[test]
    fn without_an_early_build_the_first_create_builds_the_engine() {
        let shared = SharedRuntime::build_early_with(None);
        let runtime = shared.get_or_build(&settings(4)).unwrap();
        assert_eq!(runtime.config(), &settings(4));
    }
}
