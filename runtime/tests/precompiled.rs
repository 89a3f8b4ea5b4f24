//! Precompiled code shipped with a guest: used only when a trusted key signed it for this wasm and engine,
//! otherwise ignored and the wasm compiled; a tampered file is never executed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmhttp_runtime::precompiled::{self, PrecompiledStore, Signed, TrustedKey};
use wasmhttp_runtime::*;

/// Precompiled code in a directory, named as in an image.
struct Dir(PathBuf);

impl PrecompiledStore for Dir {
    fn find(&self, engine_hash: &str) -> Result<Option<Signed>, String> {
        let (code, sig) = precompiled::file_names(engine_hash);
        let read = |name: &str| std::fs::read(self.0.join(name)).ok();
        Ok(read(&code)
            .zip(read(&sig))
            .map(|(code, signature)| Signed { code, signature }))
    }
}

/// Compiles `source` as `wasmhttp image build --sign` does and writes the signed code into `dir`.
fn ship(source: &Source, secret: &[u8], dir: &Path) -> String {
    let (hash, code) = Runtime::new(EngineConfig::default())
        .unwrap()
        .precompile(source)
        .unwrap();
    let signature = precompiled::sign(secret, source.digest(), &hash, &code).unwrap();
    let (code_name, sig_name) = precompiled::file_names(&hash);
    std::fs::write(dir.join(code_name), code).unwrap();
    std::fs::write(dir.join(sig_name), signature).unwrap();
    hash
}

fn node(signers: &[&str], cache: Option<&Path>) -> Runtime {
    Runtime::new(EngineConfig {
        max_instances: 8,
        cache_dir: cache.map(Path::to_path_buf),
        precompiled_signers: signers
            .iter()
            .map(|k| TrustedKey::parse(k).unwrap())
            .collect(),
        ..EngineConfig::default()
    })
    .unwrap()
}

#[test]
fn signed_code_is_used_by_a_node_that_trusts_its_signer_and_only_then() {
    let (secret, public) = precompiled::generate_key().unwrap();
    let (_, stranger) = precompiled::generate_key().unwrap();
    for guest in ["hello", "hello-p3"] {
        let shipped = tempfile::tempdir().unwrap();
        let source = example(guest);
        let hash = ship(&source, &secret, shipped.path());
        let with_code = || {
            source
                .clone()
                .with_precompiled(Arc::new(Dir(shipped.path().into())))
        };

        let cache = tempfile::tempdir().unwrap();
        let trusting = node(&[&stranger, &public], Some(cache.path()));
        let loaded = trusting.load(&with_code()).unwrap();
        assert_eq!(
            loaded.origin(),
            &Origin::Precompiled(TrustedKey::parse(&public).unwrap()),
            "{guest}"
        );
        assert_eq!(loaded.kind(), WasmKind::HttpService, "{guest}");
        let again = node(&[&public], Some(cache.path())).load(&source).unwrap();
        assert_eq!(
            again.origin(),
            &Origin::Cache,
            "{guest}: the shipped code seeds the node's cache"
        );
        assert_eq!(
            node(&[&public], None).load(&with_code()).unwrap().origin(),
            &Origin::Precompiled(TrustedKey::parse(&public).unwrap()),
            "{guest}: without a cache"
        );

        for (why, runtime) in [
            ("no signer trusted", node(&[], None)),
            ("another signer trusted", node(&[&stranger], None)),
        ] {
            assert_eq!(
                runtime.load(&with_code()).unwrap().origin(),
                &Origin::Compiled,
                "{guest}: {why}"
            );
        }

        // Code and signature moved to another wasm: refused.
        let other = example(if guest == "hello" { "echo" } else { "echo-p3" })
            .with_precompiled(Arc::new(Dir(shipped.path().into())));
        assert_eq!(
            node(&[&public], None).load(&other).unwrap().origin(),
            &Origin::Compiled,
            "{guest}"
        );

        // One flipped byte in the code: the signature no longer matches and it is never executed.
        let code = shipped.path().join(precompiled::file_names(&hash).0);
        let mut bytes = std::fs::read(&code).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&code, &bytes).unwrap();
        let reloaded = node(&[&public], None).load(&with_code()).unwrap();
        assert_eq!(
            reloaded.origin(),
            &Origin::Compiled,
            "{guest}: tampered code"
        );
    }
}

#[test]
fn only_components_are_precompiled() {
    let module = Source::from_bytes(
        "p1",
        wat::parse_str(include_str!("p1_command.wat")).unwrap(),
    );
    let err = runtime().precompile(&module).unwrap_err().to_string();
    assert!(err.contains("only components"), "{err}");
}
