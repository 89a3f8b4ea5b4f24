//! Does this kernel's `PAGEMAP_SCAN` ioctl report pages nobody ever touched as written?
//!
//! wasmtime resets a pooled linear memory by asking `PAGEMAP_SCAN` for the pages that are written and
//! neither the zero page nor file-backed, copying back up to `linear_memory_keep_resident` bytes of them and
//! dropping the rest with `madvise`. If the kernel also reports never-touched pages (empty entries of a page
//! table that exists) as written, the budget goes on those, every reset ends in an `madvise` of the rest of
//! the memory, and the next instance faults its pages in again. Asking for pages that are also present or
//! swapped out excludes them. This prints what the kernel answers both ways for one 1 MiB mapping of which
//! one page was read and one written.
//!
//! `cargo run --release -p wasmhttp-bench --bin pagemap-holes`

use std::fs::File;
use std::os::fd::AsRawFd;

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

/// `struct page_region` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Region {
    start: u64,
    end: u64,
    categories: u64,
}

const WRITTEN: u64 = 1 << 1;
const FILE: u64 = 1 << 2;
const PRESENT: u64 = 1 << 3;
const SWAPPED: u64 = 1 << 4;
const PFNZERO: u64 = 1 << 5;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PAGE: usize = 4096;
const PAGES: usize = 256;

/// The page ranges (in pages from `base`) the scan wasmtime does reports, with `anyof` as the extra mask.
fn scan(pagemap: &File, base: *mut u8, anyof: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut regions = [Region::default(); 64];
    let mut arg = ScanArg {
        size: std::mem::size_of::<ScanArg>() as u64,
        start: base as u64,
        end: base as u64 + (PAGES * PAGE) as u64,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_inverted: PFNZERO | FILE,
        category_mask: WRITTEN | PFNZERO | FILE,
        category_anyof_mask: anyof,
        ..ScanArg::default()
    };
    // SAFETY: `arg` describes `regions`, which outlives the call, and a mapping this process owns.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
    if found < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let page = |addr: u64| (addr - base as u64) / PAGE as u64;
    Ok(regions[..found as usize]
        .iter()
        .map(|r| (page(r.start), page(r.end)))
        .collect())
}

fn main() -> std::io::Result<()> {
    let pagemap = File::open("/proc/self/pagemap")?;
    // SAFETY: a fresh private anonymous mapping, used only through `base` below and never unmapped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base.cast::<u8>();
    // SAFETY: both pages lie inside the mapping.
    unsafe {
        std::ptr::read_volatile(base.add(8 * PAGE));
        std::ptr::write_volatile(base.add(10 * PAGE), 1);
    }
    let as_wasmtime = scan(&pagemap, base, 0)?;
    let present_or_swapped = scan(&pagemap, base, PRESENT | SWAPPED)?;
    println!("one page read (8), one written (10), the other 254 never touched");
    println!("written, not zero page, not file (wasmtime 50): {as_wasmtime:?}");
    println!("the same, and present or swapped:                {present_or_swapped:?}");
    let holes = as_wasmtime.iter().any(|&(s, e)| !(s..e).all(|p| p == 10));
    println!(
        "never-touched pages reported as written: {}",
        if holes { "yes" } else { "no" }
    );
    Ok(())
}
