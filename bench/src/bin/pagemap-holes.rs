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
use wasmhttp_runtime::pagemap::{PAGE, PRESENT, Query, Region, SWAPPED, anonymous_pages, scan};

const PAGES: usize = 256;

/// The page ranges (in pages from `base`) the scan wasmtime does reports, with `anyof` as the extra mask.
fn written(pagemap: &File, base: *mut u8, anyof: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut regions = [Region::default(); 64];
    let found = scan(
        pagemap,
        base,
        PAGES * PAGE,
        Query::wasmtime_reset(anyof),
        &mut regions,
    )?;
    let page = |addr: u64| (addr - base as u64) / PAGE as u64;
    Ok(regions[..found]
        .iter()
        .map(|r| (page(r.start), page(r.end)))
        .collect())
}

fn main() -> std::io::Result<()> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let base = anonymous_pages(PAGES)?;
    // SAFETY: both pages lie inside the mapping.
    unsafe {
        std::ptr::read_volatile(base.add(8 * PAGE));
        std::ptr::write_volatile(base.add(10 * PAGE), 1);
    }
    let as_wasmtime = written(&pagemap, base, 0)?;
    let present_or_swapped = written(&pagemap, base, PRESENT | SWAPPED)?;
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
