//! Links the binaries of this package as position-dependent executables (the CLI uses this script too).
//!
//! containerd runs one shim process per pod, so what each process holds privately is the per-pod cost. In a
//! position-independent executable the loader writes every absolute pointer in the binary's read-only data
//! (vtables, string tables: ~1.2 MiB here) at start, which makes those pages private to the process; linked
//! at a fixed address they stay clean and are shared by every shim through the page cache. containerd's own
//! `containerd-shim-runc-v2` (Go) is linked the same way. Those relocations also cost ~1 ms of start-up
//! (`perf stat -r 30 wasmhttp --version`: 2.71 → 1.38 ms), which every `wasmhttp run` pays.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
