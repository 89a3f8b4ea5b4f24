//! Linux's `PAGEMAP_SCAN` ioctl (6.7+), which wasmtime's pooling allocator resets memory with, and the
//! private anonymous mappings the benchmarks scan.

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

/// A fresh private anonymous read-write mapping of `pages` pages, never unmapped.
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
