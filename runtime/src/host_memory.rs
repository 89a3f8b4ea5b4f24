//! Host memory charged to the service it was allocated for.
//!
//! A guest makes the shim allocate on its behalf: `wasi:http` fields and bodies, its store and instance,
//! the buffers of its connections and outbound requests. Counting that memory per poll does not work: a
//! buffer allocated in one service's poll is often freed elsewhere (by hyper after writing it, by the log
//! writer thread), so per-poll deltas drift. Instead every allocation carries a small header naming the
//! account that was being charged when it was made, and its free credits that same account wherever it
//! happens. An account's figure is thus exactly the bytes still allocated for it.
//!
//! Charging happens only in a process whose global allocator is [`ChargingAllocator`] (the shim and the
//! CLI install it); elsewhere every account reads zero. Which account is charged is set per thread by
//! [`Account::charging`], for the duration of a poll of the service's tasks (see `metered.rs`).
//!
//! An account may be given a room ([`Account::set_room`]): when a publication takes its figure past it,
//! the allocator calls the waker registered with [`on_room_exceeded`] (the engines advance their epoch,
//! so that running guests check their limits at once rather than at the next tick). The allocator only
//! notices; what is done about it is the caller's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

/// How many accounts can be open (or closed with memory still allocated for them) at once; more are
/// charged to no one. Each service and each command run takes one.
const ACCOUNTS: usize = 4096;
/// Bytes in front of every allocation of at most this alignment (more aligned ones use their alignment).
const HEADER: usize = 16;

const FREE: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;

/// One account, on a cache line of its own so that services on different threads do not share one.
#[repr(align(64))]
struct Slot {
    bytes: AtomicU64,
    /// The figure past which the waker is called; `u64::MAX` for none.
    room: AtomicU64,
    state: AtomicU8,
}

/// Account 0 is "no one": it is never opened and never counted.
static SLOTS: [Slot; ACCOUNTS] = [const {
    Slot {
        bytes: AtomicU64::new(0),
        room: AtomicU64::new(u64::MAX),
        state: AtomicU8::new(FREE),
    }
}; ACCOUNTS];

/// Called when an account's figure passes its room; see [`on_room_exceeded`].
static WAKER: OnceLock<fn()> = OnceLock::new();

/// How far a thread's unpublished sum for the account it charges may grow before it is published.
const PUBLISH_AT: u64 = 256 << 10;

thread_local! {
    /// The account this thread's allocations are charged to now; 0 for none.
    static CHARGED: Cell<u32> = const { Cell::new(0) };
    /// Bytes this thread has charged to (or freed from) [`CHARGED`] and not yet published.
    static PENDING: Cell<i64> = const { Cell::new(0) };
    /// The same for one other account, inside a charging poll: a service's connections free what its
    /// instances allocated and the reverse, many times a request.
    static OTHER: Cell<(u32, i64)> = const { Cell::new((0, 0)) };
}

/// A global allocator that charges every allocation to the account its thread is charging at the time,
/// and credits it back when freed. Install it with `#[global_allocator]` to make [`Account`]s count.
pub struct ChargingAllocator;

impl ChargingAllocator {
    /// The bytes in front of an allocation of `layout`, and the layout asked of the system allocator.
    fn outer(layout: Layout) -> Option<(usize, Layout)> {
        let offset = layout.align().max(HEADER);
        let size = layout.size().checked_add(offset)?;
        Some((offset, Layout::from_size_align(size, offset).ok()?))
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn alloc_for(&self, layout: Layout, account: u32, zeroed: bool) -> *mut u8 {
        let Some((offset, outer)) = Self::outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size; the header lies inside the block, before the caller's part.
        unsafe {
            let base = if zeroed {
                System.alloc_zeroed(outer)
            } else {
                System.alloc(outer)
            };
            if base.is_null() {
                return base;
            }
            let ptr = base.add(offset);
            ptr.cast::<u64>().sub(1).write(u64::from(account));
            charge(account, layout.size(), 0);
            ptr
        }
    }
}

/// The account an allocation made by [`ChargingAllocator`] was charged to.
///
/// # Safety
/// `ptr` was returned by [`ChargingAllocator`] and is still allocated.
unsafe fn account_of(ptr: *mut u8) -> u32 {
    // SAFETY: every allocation has its account in the 8 bytes before it.
    unsafe { ptr.cast::<u64>().sub(1).read() as u32 }
}

/// Moves `account` from `old` bytes to `new` bytes. Inside a charging poll, changes to the account being
/// charged, and to one other, are summed on the thread and published when the poll ends (or the sum grows
/// large): most of a request's allocations are freed within the same poll or the next, and one shared
/// counter updated for each of them would bounce its cache line between the cores.
fn charge(account: u32, new: usize, old: usize) {
    if account == 0 {
        return;
    }
    let delta = new as i64 - old as i64;
    let charged = CHARGED.get();
    if charged == account {
        PENDING.set(batched(account, PENDING.get() + delta));
    } else if charged != 0 {
        let (other, pending) = OTHER.get();
        if other == account {
            OTHER.set((account, batched(account, pending + delta)));
        } else {
            publish(other, pending);
            OTHER.set((account, batched(account, delta)));
        }
    } else {
        // Outside a poll nothing would publish it later.
        publish(account, delta);
    }
}

/// What stays of an unpublished sum for `account`: all of it, or nothing once it is large enough to publish.
fn batched(account: u32, pending: i64) -> i64 {
    if pending.unsigned_abs() < PUBLISH_AT {
        return pending;
    }
    publish(account, pending);
    0
}

/// Publishes what this thread has not yet published, for every account.
fn publish_pending() {
    publish(CHARGED.get(), PENDING.replace(0));
    let (other, pending) = OTHER.replace((0, 0));
    publish(other, pending);
}

/// Adds `delta` to `account`'s shared figure, and calls the waker if that takes it past its room.
fn publish(account: u32, delta: i64) {
    if account == 0 || delta == 0 {
        return;
    }
    let slot = &SLOTS[account as usize];
    let before = slot.bytes.fetch_add(delta as u64, Relaxed);
    if delta > 0 {
        let room = slot.room.load(Relaxed);
        if before <= room
            && before.wrapping_add(delta as u64) > room
            && let Some(wake) = WAKER.get()
        {
            wake();
        }
    }
}

/// Registers the function called when a publication takes an account's figure past its room. It runs
/// inside the allocator: it must not allocate, nor wait for anything an allocation may hold. It bounds
/// its own rate, since a guest can cross its room back and forth. The first registration stays.
pub(crate) fn on_room_exceeded(wake: fn()) {
    let _ = WAKER.set(wake);
}

// SAFETY: every block is the system allocator's, with the caller's part at a fixed offset of the
// alignment the caller asked for; the offset is recomputed from the layout the caller passes back.
unsafe impl GlobalAlloc for ChargingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's.
        unsafe { self.alloc_for(layout, CHARGED.get(), false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's.
        unsafe { self.alloc_for(layout, CHARGED.get(), true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((offset, outer)) = Self::outer(layout) else {
            return; // never allocated by us
        };
        // SAFETY: `ptr` came from `alloc_for` with this layout, so its block starts `offset` before it.
        unsafe {
            charge(account_of(ptr), 0, layout.size());
            System.dealloc(ptr.sub(offset), outer);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `alloc_for` with `layout`; the block keeps its account when it moves.
        unsafe {
            let account = account_of(ptr);
            if layout.align() <= HEADER {
                let (Some((offset, outer)), Some(new_outer)) = (
                    Self::outer(layout),
                    Self::outer(Layout::from_size_align_unchecked(new_size, layout.align())),
                ) else {
                    return std::ptr::null_mut();
                };
                let base = System.realloc(ptr.sub(offset), outer, new_outer.1.size());
                if base.is_null() {
                    return base;
                }
                charge(account, new_size, layout.size());
                return base.add(offset);
            }
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc_for(new_layout, account, false);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// Host memory charged to one service or command run: what was allocated while it was being charged and
/// is not yet freed. Closing it (dropping) keeps its number taken until the last of that memory is freed.
#[derive(Debug)]
pub(crate) struct Account(u32);

static EXHAUSTED_WARNED: AtomicBool = AtomicBool::new(false);

impl Account {
    /// A fresh account; one that charges no one when [`ACCOUNTS`] are in use.
    pub(crate) fn open() -> Self {
        let claim = |from: u8| {
            (1..ACCOUNTS).find(|&i| {
                let slot = &SLOTS[i];
                // A closed account is reusable once nothing allocated for it remains.
                (from == FREE || slot.bytes.load(Relaxed) == 0)
                    && slot
                        .state
                        .compare_exchange(from, OPEN, Relaxed, Relaxed)
                        .is_ok()
            })
        };
        match claim(FREE).or_else(|| claim(CLOSED)) {
            Some(i) => Account(i as u32),
            None => {
                if !EXHAUSTED_WARNED.swap(true, Relaxed) {
                    tracing::warn!(
                        accounts = ACCOUNTS,
                        "host memory of new services is not charged: all accounts are in use"
                    );
                }
                Account(0)
            }
        }
    }

    /// Sets the figure past which a publication calls the waker (see [`on_room_exceeded`]).
    pub(crate) fn set_room(&self, room: u64) {
        if self.0 != 0 {
            SLOTS[self.0 as usize].room.store(room, Relaxed);
        }
    }

    /// Bytes allocated for this account and not yet freed, with what this thread has not yet published.
    pub(crate) fn bytes(&self) -> u64 {
        match self.0 {
            0 => 0,
            i => {
                let shared = SLOTS[i as usize].bytes.load(Relaxed) as i64;
                let mut pending = if CHARGED.get() == i { PENDING.get() } else { 0 };
                let (other, unpublished) = OTHER.get();
                if other == i {
                    pending += unpublished;
                }
                // Frees can be seen before the allocations they undo, on another thread, for a moment.
                (shared + pending).max(0) as u64
            }
        }
    }

    /// Charges this thread's allocations to this account until the returned guard drops.
    pub(crate) fn charging(&self) -> Charging {
        publish_pending();
        Charging(CHARGED.replace(self.0))
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if self.0 != 0 {
            let slot = &SLOTS[self.0 as usize];
            slot.room.store(u64::MAX, Relaxed);
            slot.state.store(CLOSED, Relaxed);
        }
    }
}

/// Restores the account charged before [`Account::charging`], a panicking poll's included.
pub(crate) struct Charging(u32);

impl Drop for Charging {
    fn drop(&mut self) {
        publish_pending();
        CHARGED.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: ChargingAllocator = ChargingAllocator;

    /// The reuse test takes every account for a moment; the others must not be left with account 0.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn memory_is_charged_where_allocated_and_credited_where_freed() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let account = Account::open();
        let (small, large) = {
            let _charging = account.charging();
            (vec![0u8; 1000], vec![0u8; 1 << 20])
        };
        // The small one stayed in the thread's sum until the charging ended; both show now.
        assert_eq!(account.bytes(), 1000 + (1 << 20));
        // Freed on another thread, outside any charging: the account gets it back all the same.
        std::thread::spawn(move || drop((small, large)))
            .join()
            .unwrap();
        assert_eq!(account.bytes(), 0);
    }

    #[test]
    fn frees_for_another_account_are_published_when_the_poll_ends() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (instances, clients) = (Account::open(), Account::open());
        let shared = |account: &Account| SLOTS[account.0 as usize].bytes.load(Relaxed);
        let held = {
            let _charging = instances.charging();
            vec![0u8; 1000]
        };
        assert_eq!(shared(&instances), 1000);
        {
            let _charging = clients.charging();
            drop(held);
            // Not yet in the shared figure, which other cores read, but this thread counts it already.
            assert_eq!(shared(&instances), 1000);
            assert_eq!(instances.bytes(), 0);
        }
        assert_eq!(shared(&instances), 0);
        assert_eq!((instances.bytes(), clients.bytes()), (0, 0));
    }

    #[test]
    fn growth_and_alignment_keep_the_account_exact() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let account = Account::open();
        {
            let _charging = account.charging();
            let mut grown: Vec<u64> = Vec::new();
            for i in 0..100_000 {
                grown.push(i);
            }
            let aligned = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: a non-zero layout, freed below with the same layout.
            unsafe {
                let page = std::alloc::alloc(aligned);
                assert_eq!(page as usize % 4096, 0);
                let page = std::alloc::realloc(page, aligned, 3 * 4096);
                assert_eq!(page as usize % 4096, 0);
                assert!(account.bytes() + PUBLISH_AT >= 800_000 + 3 * 4096);
                std::alloc::dealloc(
                    page,
                    std::alloc::Layout::from_size_align(3 * 4096, 4096).unwrap(),
                );
            }
            drop(grown);
        }
        assert_eq!(account.bytes(), 0);
    }

    #[test]
    fn a_closed_account_is_reused_only_once_its_memory_is_freed() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let account = Account::open();
        let number = account.0;
        let held = {
            let _charging = account.charging();
            vec![1u8; 4096]
        };
        drop(account);
        let others: Vec<Account> = (1..ACCOUNTS).map(|_| Account::open()).collect();
        assert!(others.iter().all(|a| a.0 != number), "reused while held");
        drop(held);
        drop(others);
        let again: Vec<Account> = (1..ACCOUNTS).map(|_| Account::open()).collect();
        assert!(again.iter().any(|a| a.0 == number));
    }
}
