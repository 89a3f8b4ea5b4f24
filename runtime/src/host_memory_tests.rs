//! Tests of `host_memory`, under the charging allocator as this test binary's global allocator.

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
fn every_alignment_path_is_aligned_zeroed_and_exact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let account = Account::open();
    {
        let _charging = account.charging();
        // Up to malloc's alignment the block is glibc's own; above it, the header takes an alignment unit.
        for align in [1, 8, MALLOC_ALIGN, 2 * MALLOC_ALIGN, 64] {
            let layout = Layout::from_size_align(40, align).unwrap();
            // SAFETY: non-zero layouts, each freed below with the layout it has then.
            unsafe {
                let block = std::alloc::alloc_zeroed(layout);
                assert_eq!(block as usize % align, 0, "align {align}");
                assert!(
                    std::slice::from_raw_parts(block, 40)
                        .iter()
                        .all(|&b| b == 0)
                );
                block.write_bytes(7, 40);
                assert_eq!(account.bytes(), 40, "align {align}");
                let grown = std::alloc::realloc(block, layout, 5000);
                assert_eq!(grown as usize % align, 0, "align {align}");
                assert!(
                    std::slice::from_raw_parts(grown, 40)
                        .iter()
                        .all(|&b| b == 7)
                );
                assert_eq!(account.bytes(), 5000, "align {align}");
                std::alloc::dealloc(grown, Layout::from_size_align(5000, align).unwrap());
                assert_eq!(account.bytes(), 0, "align {align}");
            }
        }
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
