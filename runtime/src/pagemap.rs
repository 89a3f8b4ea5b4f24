//! Linux's `PAGEMAP_SCAN` ioctl (6.7+), which wasmtime's pooling allocator resets memory with: whether this
//! kernel reports pages nobody ever touched as written ([`reports_untouched_as_written`], which the engine's
//! slot residency depends on), and the scan and mappings the benchmarks probe it with.
//!
//! wasmtime resets a pooled linear memory by asking the scan for the pages that are written and neither the
//! zero page nor file-backed, copying back up to its keep-resident budget of them and dropping the rest with
//! `madvise`. Some kernels (6.18 here) also report the empty entries of a page table that exists as written;
//! wasmtime 50.0.1 does not filter them out (50.0.3 asks for present or swapped pages as well), so a guest
//! whose memory starts with pages it never touches (a Rust guest's stack bottom) has the budget spent on
//! copying zeros into those, and still ends every reset with an `madvise` of the rest.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

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
    /// The pages wasmtime 50.0.1 resets a pooled memory by: written, neither the zero page nor a file's;
    /// and, when `anyof` is not empty, having one of those categories too (50.0.3 asks `PRESENT | SWAPPED`).
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

/// Whether this kernel's `PAGEMAP_SCAN` reports a page nobody touched as written when a neighbour in its
/// page table was written, asked as wasmtime 50.0.1 asks. Probed once per process on a mapping of its own;
/// `false` where the scan is missing or fails (wasmtime then resets by its first-bytes rule).
pub fn reports_untouched_as_written() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| probe().unwrap_or(false))
}

fn probe() -> std::io::Result<bool> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let base = untouched_between_written()?;
    let found = scan_as_wasmtime(&pagemap, base.wrapping_add(PAGE), 0);
    // SAFETY: the mapping is this function's own, and nothing refers to it any more.
    unsafe { libc::munmap(base.cast(), 3 * PAGE) };
    Ok(found? > 0)
}

/// Three fresh pages, 0 and 2 written, 1 never touched: whatever 2 MiB boundary lies between them, page 1
/// shares its page table with one of the written pages. The caller unmaps them.
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
    let query = Query::wasmtime_reset(anyof);
    scan(pagemap, page, PAGE, query, &mut [Region::default(); 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's answer is what a scan of an untouched page next to written ones says; asking for
    /// present or swapped pages as well never reports it, and does report it once written (so the answer
    /// is about the kernel's quirk, not about a page the probe touched by mistake).
    #[test]
    fn the_probe_reports_what_the_kernel_says_of_an_untouched_page() {
        let Ok(pagemap) = File::open("/proc/self/pagemap") else {
            assert!(!reports_untouched_as_written());
            return;
        };
        let base = untouched_between_written().unwrap();
        let page = base.wrapping_add(PAGE);
        match scan_as_wasmtime(&pagemap, page, 0) {
            Ok(found) => {
                assert_eq!(found > 0, reports_untouched_as_written());
                assert_eq!(
                    scan_as_wasmtime(&pagemap, page, PRESENT | SWAPPED).unwrap(),
                    0
                );
                // SAFETY: inside the mapping; the write makes page 1 present and written.
                unsafe { std::ptr::write_volatile(page, 1) };
                let written = scan_as_wasmtime(&pagemap, page, PRESENT | SWAPPED).unwrap();
                assert_eq!(written, 1, "a written page is reported");
            }
            Err(_) => assert!(!reports_untouched_as_written(), "no scan, no quirk"),
        }
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(base.cast(), 3 * PAGE) };
    }
}
