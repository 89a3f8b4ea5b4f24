//! One wasmtime engine with what belongs to it: its compile cache, its component linker, its epoch clock,
//! and where its code comes from (compiled, the cache, or signed precompiled code shipped with the guest).

use super::on_thread::OnThread;
use super::{EngineConfig, Origin};
use crate::cache::CompileCache;
use crate::instance::InstanceState;
use crate::precompiled::TrustedKey;
use crate::source::Source;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Module};

/// One wasmtime engine with its compile cache and component linker.
pub(super) struct Flavour {
    pub(super) engine: Engine,
    /// Names this engine's code-generation settings, for the cache and for precompiled code.
    pub(super) engine_hash: String,
    signers: Vec<TrustedKey>,
    pub(super) cache: Option<CompileCache>,
    /// Defining the ~100 WASI and wasi:http host functions takes ~0.4 ms, a tenth of a start: it runs on its
    /// own thread while the caller loads its guest.
    component_linker: OnThread<Linker<InstanceState>>,
}

impl Flavour {
    pub(super) fn new(
        config: &EngineConfig,
        concurrent: bool,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, crate::Error> {
        let engine = Engine::new(&config.wasmtime_config(concurrent))
            .map_err(|e| crate::Error::Engine(format!("{e:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir, config.cache_max_bytes, &engine)?),
            None => None,
        };
        let component_linker = OnThread::spawn("WASI linker", {
            let engine = engine.clone();
            move || {
                let mut linker = Linker::new(&engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
                wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
                if concurrent {
                    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
                    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
                }
                Ok(linker)
            }
        })?;
        super::epoch_clock::spawn(engine.clone(), config.epoch_tick, stop)?;
        Ok(Flavour {
            engine_hash: crate::precompiled::engine_hash(&engine),
            signers: config.precompiled_signers.clone(),
            engine,
            cache,
            component_linker,
        })
    }

    /// Compiles a component, or fetches it from this engine's cache or the signed code shipped with it.
    pub(super) fn component(
        &self,
        source: &Source,
    ) -> Result<(Component, Origin), wasmtime::Error> {
        let engine = &self.engine;
        // SAFETY: `deserialize_file` runs only on entries whose sha256 matched the sum written next to them,
        // and the cache only ever stores `Component::serialize` output of an engine with the same
        // compatibility hash (part of the entry's name) in a directory private to this user. The file is
        // mapped, not copied: entries are replaced by rename, never rewritten in place.
        if let Some(c) = self.cached(source, |path| unsafe {
            Component::deserialize_file(engine, path)
        }) {
            return Ok((c, Origin::Cache));
        }
        if let Some((c, signer)) = self.precompiled(source) {
            return Ok((c, Origin::Precompiled(signer)));
        }
        let c = compiling(source, || Component::new(engine, source.bytes()))?;
        self.store(source, c.serialize());
        Ok((c, Origin::Compiled))
    }

    /// The precompiled code shipped with `source` for this engine, when a trusted key signed it. It is
    /// stored in the cache first and mapped from there, so it costs no more memory than a cache hit.
    fn precompiled(&self, source: &Source) -> Option<(Component, TrustedKey)> {
        let store = source.precompiled()?;
        let name = source.name();
        let hash = &self.engine_hash;
        if self.signers.is_empty() {
            tracing::debug!(
                name,
                "not looking for precompiled code: no [engine] precompiled-signers"
            );
            return None;
        }
        let signed = match store.find(hash) {
            Ok(Some(signed)) => signed,
            Ok(None) => {
                tracing::info!(
                    name,
                    engine = hash,
                    "no precompiled code shipped for this engine's settings"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(name, "ignoring precompiled code: {e}");
                return None;
            }
        };
        let signer = match crate::precompiled::verify(&self.signers, source.digest(), hash, &signed)
        {
            Ok(key) => key.clone(),
            Err(why) => {
                tracing::warn!(name, engine = hash, "ignoring precompiled code: {why}");
                return None;
            }
        };
        let engine = &self.engine;
        // SAFETY: the code was signed by a key the node's operator listed as trusted to ship native code,
        // over this wasm's digest, this engine's compatibility hash and the code's own digest. The cache
        // entry is the same bytes, in a directory private to this user.
        let mapped = self.cache.as_ref().and_then(|cache| {
            cache.put(source.digest(), &signed.code);
            cache.get(source.digest(), |path| unsafe {
                Component::deserialize_file(engine, path)
            })
        });
        let loaded = match mapped {
            Some(c) => Ok(c),
            None => unsafe { Component::deserialize(engine, &signed.code) },
        };
        match loaded {
            Ok(c) => {
                tracing::info!(name, engine = hash, %signer, "loaded precompiled code shipped with the guest");
                Some((c, signer))
            }
            Err(e) => {
                tracing::warn!(name, "ignoring precompiled code wasmtime refused: {e:#}");
                None
            }
        }
    }

    /// Compiles a core module, or fetches it from this engine's cache.
    pub(super) fn module(&self, source: &Source) -> Result<(Module, Origin), wasmtime::Error> {
        let engine = &self.engine;
        // SAFETY: as above, for `Module::serialize` output.
        if let Some(m) = self.cached(source, |path| unsafe {
            Module::deserialize_file(engine, path)
        }) {
            return Ok((m, Origin::Cache));
        }
        let m = compiling(source, || Module::new(engine, source.bytes()))?;
        self.store(source, m.serialize());
        Ok((m, Origin::Compiled))
    }

    fn cached<T>(
        &self,
        source: &Source,
        deserialize: impl FnOnce(&std::path::Path) -> wasmtime::Result<T>,
    ) -> Option<T> {
        self.cache.as_ref()?.get(source.digest(), deserialize)
    }

    fn store(&self, source: &Source, serialized: wasmtime::Result<Vec<u8>>) {
        let Some(cache) = &self.cache else {
            return;
        };
        match serialized {
            Ok(bytes) => cache.put(source.digest(), &bytes),
            Err(e) => tracing::warn!(
                name = source.name(),
                "cannot serialize compiled code: {e:#}"
            ),
        }
    }

    pub(super) fn linker(&self) -> wasmtime::Result<&Linker<InstanceState>> {
        self.component_linker
            .get()
            .map_err(|e| wasmtime::Error::msg(format!("linking WASI: {e}")))
    }
}

/// Runs `compile`, saying so before and after: compiling a big guest (an interpreter and its heap) takes
/// seconds, and until it is done the service's port refuses connections.
pub(super) fn compiling<T>(
    source: &Source,
    compile: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let started = Instant::now();
    let bytes = source.bytes().len();
    tracing::info!(
        name = source.name(),
        bytes,
        "compiling (not in the compile cache)"
    );
    super::compile_cpu::count_pool_threads();
    let compiled = compile()?;
    tracing::info!(name = source.name(), took = ?started.elapsed(), "compiled");
    Ok(compiled)
}
