//! Linux's `PAGEMAP_SCAN` ioctl (6.7+), which wasmtime's pooling allocator resets memory with, and the scan
//! and mappings the benchmarks probe it with (`pagemap-holes`, `seccomp-cost`).
//!
//! wasmtime resets a pooled linear memory by asking the scan for the pages that are written and neither the
//! zero page nor file-backed, copying back up to its keep-resident budget of them (the engine's
//! `slot_keep_resident`) and dropping the rest with `madvise`. Some kernels (6.18 here) also report the empty
//! entries of a page table that exists as written. wasmtime 50.0.1 did not filter them out, so a guest whose
//! memory starts with pages it never touches (a Rust guest's stack bottom) had the budget spent on copying
//! zeros into those and still ended every reset with an `madvise` of the rest; 50.0.2 asks for pages present
//! or swapped as well, which this module's test checks on the kernel it runs on.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
/// The page size the scans are reported in.
pub const PAGE: usize = 4096;

/// Page categories (`PAGE_IS_*` of `<linux/fs.h>`).
pub const WRITTEN: u64 = 1 << 1;
/// Backed by a file.
pub const FILE: u64 = 1 << 2;
/// Present in memory.
pub const PRESENT: u64 = 1 << 3;
/// Swapped out.
pub const SWAPPED: u64 = 1 << 4;
/// The shared zero page.
pub const PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of `<linux/fs.h>`: one run of pages the scan reports.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Region {
    /// First byte of the run.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// The categories asked for in [`Query::returned`] that the run has.
    pub categories: u64,
}

/// Which pages a scan reports: those whose categories, after flipping `inverted`, include all of `mask`
/// and any of `anyof` (when not empty); `returned` is what each region says about itself.
#[derive(Clone, Copy, Default)]
pub struct Query {
    /// Categories whose meaning is flipped before matching.
    pub inverted: u64,
    /// Categories a page must all have.
    pub mask: u64,
    /// Categories a page must have at least one of (none asked if empty).
    pub anyof: u64,
    /// Categories each region reports.
    pub returned: u64,
}

impl Query {
    /// The pages wasmtime resets a pooled memory by: written, neither the zero page nor a file's; and, when
    /// `anyof` is not empty, having one of those categories too (wasmtime 50.0.2 asks `PRESENT | SWAPPED`,
    /// 50.0.1 asked nothing more).
    pub const fn wasmtime_reset(anyof: u64) -> Self {
        Query {
            inverted: PFNZERO | FILE,
            mask: WRITTEN | PFNZERO | FILE,
            anyof,
            returned: 0,
        }
    }
}

/// Scans `len` bytes from `start` into `regions`; returns how many it filled.
pub fn scan(
    pagemap: &File,
    start: *mut u8,
    len: usize,
    query: Query,
    regions: &mut [Region],
) -> std::io::Result<usize> {
    let mut arg = ScanArg {
        size: std::mem::size_of::<ScanArg>() as u64,
        start: start as u64,
        end: start as u64 + len as u64,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_inverted: query.inverted,
        category_mask: query.mask,
        category_anyof_mask: query.anyof,
        return_mask: query.returned,
        ..ScanArg::default()
    };
    // SAFETY: `arg` describes `regions`, which outlives the call; the kernel only reads the scanned range's
    // page tables.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
    usize::try_from(found).map_err(|_| std::io::Error::last_os_error())
}

/// A fresh private anonymous read-write mapping of `pages` pages; the caller unmaps it, if ever.
pub fn anonymous_pages(pages: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a new mapping the kernel places; nothing else refers to it.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(memory.cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three fresh pages, 0 and 2 written, 1 never touched: whatever 2 MiB boundary lies between them, page
    /// 1 shares its page table with one of the written pages. The caller unmaps them.
    fn untouched_between_written() -> std::io::Result<*mut u8> {
        let base = anonymous_pages(3)?;
        // SAFETY: pages 0 and 2 lie inside the mapping, which nothing else uses.
        unsafe {
            std::ptr::write_volatile(base, 1);
            std::ptr::write_volatile(base.add(2 * PAGE), 1);
        }
        Ok(base)
    }

    /// Scans the one page at `page` with [`Query::wasmtime_reset`]; returns the regions found.
    fn scan_as_wasmtime(pagemap: &File, page: *mut u8, anyof: u64) -> std::io::Result<usize> {
        scan(
            pagemap,
            page,
            PAGE,
            Query::wasmtime_reset(anyof),
            &mut [Region::default(); 1],
        )
    }

    /// The engine's default slot residency is worth keeping only if the scan wasmtime resets by (as
    /// [`Query::wasmtime_reset`] restates it) reports the pages a guest wrote and never the untouched ones
    /// among them; `runtime/tests/residency.rs` checks wasmtime itself, by the page faults a request costs.
    /// Whether the scan wasmtime 50.0.1 made reports the untouched page on this kernel is printed.
    #[test]
    fn the_scan_wasmtime_resets_by_reports_written_pages_and_never_untouched_ones() {
        let Ok(pagemap) = File::open("/proc/self/pagemap") else {
            return; // no pagemap: wasmtime resets by its first-bytes rule
        };
        let base = untouched_between_written().unwrap();
        let page = base.wrapping_add(PAGE);
        match scan_as_wasmtime(&pagemap, page, PRESENT | SWAPPED) {
            Ok(found) => {
                assert_eq!(found, 0, "an untouched page is reported as one to reset");
                let as_before = scan_as_wasmtime(&pagemap, page, 0).unwrap();
                eprintln!(
                    "without PRESENT | SWAPPED the untouched page is reported: {}",
                    as_before > 0
                );
                // SAFETY: inside the mapping; the write makes page 1 present and written.
                unsafe { std::ptr::write_volatile(page, 1) };
                let written = scan_as_wasmtime(&pagemap, page, PRESENT | SWAPPED).unwrap();
                assert_eq!(written, 1, "a written page is reported");
            }
            Err(error) => {
                eprintln!("no PAGEMAP_SCAN here ({error}): wasmtime resets by its first-bytes rule")
            }
        }
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(base.cast(), 3 * PAGE) };
    }
}
