//! The engines' epoch clocks, and the early tick the charging allocator asks for when a service's host
//! memory passes what its memory limit leaves it.
//!
//! Guests check their limits when their store reaches its epoch deadline (`InstanceGuard::on_epoch`).
//! Host memory grows in host calls, between those checks: rather than a call hook on every host call
//! (which wasmtime runs around every libcall too), the allocator notices the crossing as it publishes an
//! account's figure and advances every engine's epoch, so the guest that made the host allocate meets its
//! deadline as soon as it runs again. Each engine gets at most one early tick between two of its clock's
//! ticks, so a guest crossing its room back and forth at most doubles the rate of its neighbours' checks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;
use wasmtime::Engine;

/// An engine whose clock runs.
struct Clock {
    /// What its clock thread deregisters it by.
    id: u64,
    engine: Engine,
    /// Whether it was ticked early since its clock's last tick.
    ticked_early: Arc<AtomicBool>,
}

static CLOCKS: Mutex<Vec<Clock>> = Mutex::new(Vec::new());

/// Advances the engine's epoch every `tick` until `stop` is set (when the last `Runtime` clone drops),
/// and lets the allocator advance it early.
pub(super) fn spawn(
    engine: Engine,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), crate::Error> {
    crate::host_memory::on_room_exceeded(tick_early);
    let ticked_early = Arc::new(AtomicBool::new(false));
    let id = register(&engine, &ticked_early);
    std::thread::Builder::new()
        .name("wasmhttp-epoch".into())
        .spawn(move || {
            while !stop.load(Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
                ticked_early.store(false, Relaxed);
            }
            deregister(id);
        })
        .map(drop)
        .map_err(|e| {
            deregister(id);
            crate::Error::Engine(format!("cannot start the epoch clock thread: {e}"))
        })
}

fn register(engine: &Engine, ticked_early: &Arc<AtomicBool>) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Relaxed);
    let clock = Clock {
        id,
        engine: engine.clone(),
        ticked_early: ticked_early.clone(),
    };
    CLOCKS.lock().unwrap_or_else(|e| e.into_inner()).push(clock);
    id
}

fn deregister(id: u64) {
    let removed = {
        let mut clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let at = clocks.iter().position(|clock| clock.id == id);
        at.map(|at| clocks.swap_remove(at))
    };
    // Dropped outside the lock: freeing the engine goes through the allocator.
    drop(removed);
}

/// Advances the epoch of every engine not yet ticked early since its last tick. Called from inside the
/// allocator: it neither allocates nor waits, and when the registry is busy (being changed, or by this
/// very thread allocating under it) the regular tick does the work instead.
fn tick_early() {
    let clocks = match CLOCKS.try_lock() {
        Ok(clocks) => clocks,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    for clock in clocks.iter() {
        if !clock.ticked_early.swap(true, Relaxed) {
            clock.engine.increment_epoch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However often the allocator asks, an engine is ticked early once between two of its clock's ticks:
    /// a guest crossing its room back and forth cannot make its neighbours check more often than that.
    #[test]
    fn an_engine_is_ticked_early_once_between_two_ticks() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let spin = wat::parse_str(
            r#"(module (func (export "spin") (local $i i32)
                (loop $again
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))))"#,
        )
        .unwrap();
        let module = wasmtime::Module::new(&engine, spin).unwrap();
        // Whether a store whose deadline is `ticks` from now runs to the end.
        let spins_within = |ticks| {
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(ticks);
            store.epoch_deadline_trap();
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let spin = instance
                .get_typed_func::<(), ()>(&mut store, "spin")
                .unwrap();
            move || spin.call(&mut store, ()).is_ok()
        };
        // Set before the engine is registered, so that whoever asks for the early tick, these see it.
        let (mut one_tick, mut two_ticks) = (spins_within(1), spins_within(2));
        let stop = Arc::new(AtomicBool::new(false));
        // A clock that does not tick during the test.
        spawn(engine.clone(), Duration::from_secs(3600), stop.clone()).unwrap();
        for _ in 0..3 {
            tick_early();
        }
        assert!(!one_tick(), "not ticked early");
        assert!(two_ticks(), "ticked early more than once");
        let mut again = spins_within(1);
        tick_early();
        assert!(again(), "ticked early again before its clock ticked");
        stop.store(true, Relaxed);
    }
}
