//! Loading: classification of every example, clear errors for what cannot run, and the compile cache.

mod common;

use common::*;
use wasmhttp_runtime::*;

fn wat(name: &str, text: &str) -> Source {
    Source::from_bytes(name, wat::parse_str(text).unwrap())
}

#[test]
fn every_example_is_classified() {
    let runtime = runtime();
    for (name, kind) in [
        ("hello", WasmKind::HttpService),
        ("echo", WasmKind::HttpService),
        ("cpu-burn", WasmKind::HttpService),
        ("mem-hog", WasmKind::HttpService),
        ("trap", WasmKind::HttpService),
        ("logger", WasmKind::HttpService),
        ("hello-cli", WasmKind::Command),
    ] {
        assert_eq!(runtime.load(&example(name)).unwrap().kind(), kind, "{name}");
    }
    assert_eq!(
        runtime
            .load(&wat("p1", include_str!("p1_command.wat")))
            .unwrap()
            .kind(),
        WasmKind::PreviewOneCommand
    );
}

#[test]
fn what_cannot_run_gets_a_clear_error() {
    let runtime = runtime();
    let text = Source::from_bytes("notes.txt", b"just some text, not wasm".to_vec());
    let err = runtime.load(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("notes.txt is not a WebAssembly binary"),
        "{err}"
    );

    let mut garbage = b"\0asm\x01\0\0\0".to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    let err = runtime
        .load(&Source::from_bytes("broken.wasm", garbage))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("broken.wasm is not valid WebAssembly"),
        "{err}"
    );

    let library = wat(
        "lib.wasm",
        r#"(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"#,
    );
    let err = runtime.load(&library).unwrap_err().to_string();
    assert!(
        err.starts_with("lib.wasm exports add; wasmhttp runs "),
        "{err}"
    );
    assert!(
        err.contains("wasi:http/handler@0.3.x") && !err.contains('\n'),
        "one line naming what is supported: {err}"
    );

    let err = Source::from_file("/no/such/app.wasm".as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read /no/such/app.wasm"), "{err}");
}

#[test]
fn a_service_refuses_a_command_and_vice_versa() {
    let runtime = runtime();
    let cli = runtime.load(&example("hello-cli")).unwrap();
    let err = Service::new(
        &runtime,
        &cli,
        Limits::default(),
        Capabilities::default(),
        GuestOutput::discard(),
        GuestOutput::discard(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a wasi:http service"), "{err}");
}

#[test]
fn the_compile_cache_is_used_and_a_corrupt_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        max_instances: 8,
        ..EngineConfig::default()
    };
    let hello = example("hello");

    let first = Runtime::new(config()).unwrap();
    assert!(
        !first.load(&hello).unwrap().from_cache(),
        "first load compiles"
    );
    let entry = first.cache().unwrap().entry_path(hello.digest());
    assert!(entry.exists());

    let second = Runtime::new(config()).unwrap();
    assert!(
        second.load(&hello).unwrap().from_cache(),
        "second load deserializes"
    );

    // Flip a byte in the middle of the compiled code: it must be detected, not executed.
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&entry, &bytes).unwrap();
    let third = Runtime::new(config()).unwrap();
    let reloaded = third.load(&hello).unwrap();
    assert!(!reloaded.from_cache(), "a corrupt entry is recompiled");
    assert_eq!(third.cache().unwrap().hit_counts(), (0, 1));
    assert_ne!(
        std::fs::read(&entry).unwrap(),
        bytes,
        "the entry was rewritten"
    );

    // Truncated entries likewise.
    let len = std::fs::metadata(&entry).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    assert!(
        !Runtime::new(config())
            .unwrap()
            .load(&hello)
            .unwrap()
            .from_cache()
    );
    assert!(
        Runtime::new(config())
            .unwrap()
            .load(&hello)
            .unwrap()
            .from_cache(),
        "and cached again"
    );
}
