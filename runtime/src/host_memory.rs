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
/// Bytes in front of every allocation of at most [`MALLOC_ALIGN`] (more aligned ones use their alignment).
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
///
/// It runs on every allocation of the process, so its common path is kept short: blocks of an alignment
/// `malloc` already gives come from glibc's `malloc`, `calloc` and `realloc` directly (the layout checks of
/// `std::alloc::System` cost as much again as the charge itself), and the account update inlined is a
/// thread-local add. Everything else (larger alignments, publishing, another account) is out of line.
pub struct ChargingAllocator;

/// An alignment glibc's `malloc` gives every block on this target (at least).
const MALLOC_ALIGN: usize = if cfg!(target_pointer_width = "64") {
    16
} else {
    8
};

impl ChargingAllocator {
    /// An allocation of an alignment above [`MALLOC_ALIGN`]: its header takes a whole alignment unit.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    #[cold]
    #[inline(never)]
    unsafe fn alloc_aligned(&self, layout: Layout, account: u32, zeroed: bool) -> *mut u8 {
        let Some(outer) = aligned_outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size; the header lies inside the block, before the caller's part.
        unsafe {
            let base = if zeroed {
                System.alloc_zeroed(outer)
            } else {
                System.alloc(outer)
            };
            stamped(base, layout.align(), account, layout.size())
        }
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    #[inline(always)]
    unsafe fn alloc_for(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let account = CHARGED.get();
        if layout.align() > MALLOC_ALIGN {
            // SAFETY: as the caller's.
            return unsafe { self.alloc_aligned(layout, account, zeroed) };
        }
        // A layout's size is at most `isize::MAX`, so this does not overflow.
        let size = layout.size() + HEADER;
        // SAFETY: a non-zero size; `malloc` aligns the block to `MALLOC_ALIGN`, and `HEADER` is a multiple
        // of it, so the caller's part is as aligned as it asked; the header lies before it, in the block.
        unsafe {
            let base = if zeroed {
                libc::calloc(1, size)
            } else {
                libc::malloc(size)
            }
            .cast::<u8>();
            stamped(base, HEADER, account, layout.size())
        }
    }

    /// [`GlobalAlloc::realloc`] above [`MALLOC_ALIGN`]: a new block, the contents copied.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`]; `account` is the block's.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_aligned(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        account: u32,
    ) -> *mut u8 {
        // SAFETY: as the caller's; the new layout is valid by `realloc`'s contract.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc_aligned(new_layout, account, false);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// The caller's part of a fresh block `base` (null if it is): `offset` bytes in, its account in the 8
/// bytes before it (where [`account_of`] reads it), and `size` bytes charged to that account.
///
/// # Safety
/// `base` is null or a block of at least `offset + size` bytes, `offset` at least 8.
#[inline(always)]
unsafe fn stamped(base: *mut u8, offset: usize, account: u32, size: usize) -> *mut u8 {
    if base.is_null() {
        return base;
    }
    // SAFETY: as the caller's: the header lies inside the block, before the caller's part.
    unsafe {
        let ptr = base.add(offset);
        ptr.cast::<u64>().sub(1).write(u64::from(account));
        charge(account, size as i64);
        ptr
    }
}

/// The layout asked of the system allocator for an allocation of `layout`, aligned above [`MALLOC_ALIGN`]:
/// one alignment unit in front of the caller's part, for the header.
fn aligned_outer(layout: Layout) -> Option<Layout> {
    let size = layout.size().checked_add(layout.align())?;
    Layout::from_size_align(size, layout.align()).ok()
}

/// The account an allocation made by [`ChargingAllocator`] was charged to.
///
/// # Safety
/// `ptr` was returned by [`ChargingAllocator`] and is still allocated.
unsafe fn account_of(ptr: *mut u8) -> u32 {
    // SAFETY: every allocation has its account in the 8 bytes before it.
    unsafe { ptr.cast::<u64>().sub(1).read() as u32 }
}

/// Adds `delta` bytes to `account`. Changes to the account the thread is charging are summed on the thread
/// and published when the charging ends (or the sum grows large): most of a request's allocations are
/// freed within the same poll or the next, and one shared counter updated for each of them would bounce
/// its cache line between the cores. Outside a charging poll the thread's sum is for account 0, no one's,
/// and is dropped when published.
#[inline(always)]
fn charge(account: u32, delta: i64) {
    if CHARGED.get() == account {
        let pending = PENDING.get() + delta;
        if pending.unsigned_abs() < PUBLISH_AT {
            PENDING.set(pending);
        } else {
            PENDING.set(0);
            publish(account, pending);
        }
    } else {
        charge_elsewhere(account, delta);
    }
}

/// [`charge`] for an account other than the one the thread is charging: inside a charging poll, changes to
/// one other account are summed on the thread too (a service's connections free what its instances
/// allocated and the reverse, many times a request); outside one, nothing would publish them later.
#[inline(never)]
fn charge_elsewhere(account: u32, delta: i64) {
    if account == 0 {
        return;
    }
    if CHARGED.get() == 0 {
        publish(account, delta);
        return;
    }
    let (other, pending) = OTHER.get();
    if other == account {
        OTHER.set((account, batched(account, pending + delta)));
    } else {
        publish(other, pending);
        OTHER.set((account, batched(account, delta)));
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
#[inline(never)]
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

// SAFETY: every block is glibc's (through `malloc`/`calloc`/`realloc` or `System`), with the caller's part
// at a fixed offset that is a multiple of the alignment the caller asked for; the offset is recomputed
// from the layout the caller passes back, and a block is freed the way it was allocated.
unsafe impl GlobalAlloc for ChargingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's.
        unsafe { self.alloc_for(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's.
        unsafe { self.alloc_for(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc_for` with this layout, so its header is in front of it and its
        // block starts `HEADER` (or, above `MALLOC_ALIGN`, the alignment) before it.
        unsafe {
            charge(account_of(ptr), -(layout.size() as i64));
            if layout.align() > MALLOC_ALIGN {
                dealloc_aligned(ptr, layout);
            } else {
                libc::free(ptr.sub(HEADER).cast());
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `alloc_for` with `layout`; the block keeps its account when it moves.
        unsafe {
            let account = account_of(ptr);
            if layout.align() > MALLOC_ALIGN {
                return self.realloc_aligned(ptr, layout, new_size, account);
            }
            // `new_size` rounded up to the alignment is at most `isize::MAX`: no overflow.
            let base = libc::realloc(ptr.sub(HEADER).cast(), new_size + HEADER).cast::<u8>();
            if base.is_null() {
                return base;
            }
            charge(account, new_size as i64 - layout.size() as i64);
            base.add(HEADER)
        }
    }
}

/// Frees a block allocated by [`ChargingAllocator::alloc_aligned`] (its account already credited).
///
/// # Safety
/// `ptr` came from `alloc_aligned` with `layout`.
#[cold]
#[inline(never)]
unsafe fn dealloc_aligned(ptr: *mut u8, layout: Layout) {
    // SAFETY: the block starts one alignment unit before `ptr`, with the layout `aligned_outer` gave.
    unsafe {
        if let Some(outer) = aligned_outer(layout) {
            System.dealloc(ptr.sub(layout.align()), outer);
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
#[path = "host_memory_tests.rs"]
mod tests;
