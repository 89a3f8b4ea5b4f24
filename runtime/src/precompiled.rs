//! Precompiled code shipped with a guest, and the signatures that let a node run it without compiling.
//!
//! Compiling a big guest (an interpreter and its pre-initialised heap) takes seconds, and the compile cache
//! only helps from the second start on a node. An image can instead carry the code wasmtime would make, next
//! to the wasm: `<engine hash>.cwasm` plus `<engine hash>.sig` in [`IMAGE_DIR`], one pair per engine
//! configuration it was built for. Deserializing that code runs native code chosen by whoever built the
//! image, so the node uses it only when an Ed25519 key the operator listed (`[engine] precompiled-signers`)
//! signed [`signed_message`]: the wasm's digest, the engine hash and the code's digest together, so a
//! signature cannot be moved to other code, another wasm or another engine. Anything else (no signature, an
//! unknown signer, a mismatch, a read error) is logged and the wasm is compiled as if nothing were shipped.
//!
//! This module is the policy (keys, messages, file names); [`crate::Runtime`] applies it when it loads a
//! guest whose [`crate::Source`] has a [`PrecompiledStore`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};

/// The directory, inside a container's root, that holds precompiled code (`wasmhttp image build --sign`).
pub const IMAGE_DIR: &str = "/.wasmhttp/precompiled";

/// An Ed25519 public key the node trusts to sign precompiled code.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey([u8; 32]);

impl TrustedKey {
    /// Parses the base64 form `wasmhttp image keygen` prints (32 bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| format!("{text:?} is not base64: {e}"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(TrustedKey)
            .map_err(|_| {
                format!(
                    "{text:?} is {} bytes long; an Ed25519 public key is 32",
                    bytes.len()
                )
            })
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl std::fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({self})")
    }
}

/// Precompiled code for one engine configuration, as found next to a guest.
pub struct Signed {
    /// What `Component::serialize` wrote.
    pub code: Vec<u8>,
    /// The Ed25519 signature of [`signed_message`].
    pub signature: Vec<u8>,
}

/// Where a guest's precompiled code can be found: an image's root, a directory.
pub trait PrecompiledStore: Send + Sync {
    /// The code and signature for `engine_hash`, `Ok(None)` when none was shipped for it. Errors are
    /// logged and the guest is compiled.
    fn find(&self, engine_hash: &str) -> Result<Option<Signed>, String>;
}

/// The file names of the code and the signature for `engine_hash`, inside [`IMAGE_DIR`].
pub fn file_names(engine_hash: &str) -> (String, String) {
    (format!("{engine_hash}.cwasm"), format!("{engine_hash}.sig"))
}

/// What a signer signs: the wasm's digest, the engine hash and the code's digest.
pub fn signed_message(wasm_digest: &str, engine_hash: &str, code: &[u8]) -> Vec<u8> {
    format!(
        "wasmhttp precompiled code v1\nwasm {wasm_digest}\nengine {engine_hash}\ncode sha256:{}\n",
        hex::encode(Sha256::digest(code))
    )
    .into_bytes()
}

/// A stable name for an engine's code-generation settings ([`wasmtime::Engine::precompile_compatibility_hash`]
/// through sha256, so it is the same in every process and Rust version).
pub fn engine_hash(engine: &wasmtime::Engine) -> String {
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn finish(&self) -> u64 {
            unreachable!("only finalized through the digest")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// Which trusted key signed `signed`, or why none did.
pub(crate) fn verify<'k>(
    keys: &'k [TrustedKey],
    wasm_digest: &str,
    engine_hash: &str,
    signed: &Signed,
) -> Result<&'k TrustedKey, &'static str> {
    let message = signed_message(wasm_digest, engine_hash, &signed.code);
    keys.iter()
        .find(|key| key.verifies(&message, &signed.signature))
        .ok_or("its signature is not from a key in [engine] precompiled-signers, or does not match the code")
}

/// A new signing key: the PKCS#8 document to keep secret, and the public key in [`TrustedKey`]'s form.
pub fn generate_key() -> Result<(Vec<u8>, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot generate a key".to_string())?;
    let public = public_key(pkcs8.as_ref())?;
    Ok((pkcs8.as_ref().to_vec(), public))
}

/// The public key of a PKCS#8 signing key, in [`TrustedKey`]'s form.
pub fn public_key(pkcs8: &[u8]) -> Result<String, String> {
    let pair = key_pair(pkcs8)?;
    Ok(BASE64.encode(pair.public_key().as_ref()))
}

/// Signs precompiled `code` of the wasm with `wasm_digest` for `engine_hash` with a PKCS#8 key.
pub fn sign(
    pkcs8: &[u8],
    wasm_digest: &str,
    engine_hash: &str,
    code: &[u8],
) -> Result<Vec<u8>, String> {
    let pair = key_pair(pkcs8)?;
    Ok(pair
        .sign(&signed_message(wasm_digest, engine_hash, code))
        .as_ref()
        .to_vec())
}

fn key_pair(pkcs8: &[u8]) -> Result<Ed25519KeyPair, String> {
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|e| format!("not an Ed25519 PKCS#8 key ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trusted_key_over_the_same_wasm_engine_and_code_verifies() {
        let (secret, public) = generate_key().unwrap();
        let trusted = [TrustedKey::parse(&public).unwrap()];
        let (_, other) = generate_key().unwrap();
        let untrusted = [TrustedKey::parse(&other).unwrap()];
        let code = b"compiled".to_vec();
        let signature = sign(&secret, "sha256:aa", "e1", &code).unwrap();
        let signed = Signed { code, signature };
        assert_eq!(
            verify(&trusted, "sha256:aa", "e1", &signed),
            Ok(&trusted[0])
        );
        assert!(verify(&untrusted, "sha256:aa", "e1", &signed).is_err());
        assert!(verify(&[], "sha256:aa", "e1", &signed).is_err());
        assert!(
            verify(&trusted, "sha256:bb", "e1", &signed).is_err(),
            "another wasm"
        );
        assert!(
            verify(&trusted, "sha256:aa", "e2", &signed).is_err(),
            "another engine"
        );
        let tampered = Signed {
            code: b"compiles".to_vec(),
            signature: signed.signature.clone(),
        };
        assert!(verify(&trusted, "sha256:aa", "e1", &tampered).is_err());
    }

    #[test]
    fn keys_parse_from_their_printed_form_and_bad_ones_are_named() {
        let (secret, public) = generate_key().unwrap();
        assert_eq!(public_key(&secret).unwrap(), public);
        assert_eq!(TrustedKey::parse(&public).unwrap().to_string(), public);
        assert!(
            TrustedKey::parse("not base64!")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            TrustedKey::parse("AAAA")
                .unwrap_err()
                .contains("3 bytes long")
        );
        assert!(public_key(b"junk").unwrap_err().contains("PKCS#8"));
    }
}
