//! On-disk cache of compiled code, so the second load of a binary deserializes instead of compiling.
//!
//! An entry is named `<digest>-<engine hash>.cwasm`: the sha256 of the wasm bytes plus a hash of
//! [`Engine::precompile_compatibility_hash`], so an engine with other settings never sees it. Its contents are
//! `MAGIC | payload length (u64 LE) | sha256(payload) | payload`; a read checks length and hash before the
//! payload is handed to wasmtime, so a truncated or corrupted entry is discarded and recompiled, never
//! executed. Writes go to a temp file that is renamed into place. A hit refreshes the entry's mtime, and the
//! least recently used entries are deleted when the directory grows past its size cap.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"WHCACHE1";
const HEADER_LEN: usize = MAGIC.len() + 8 + 32;
const SUFFIX: &str = ".cwasm";

/// A directory of compiled artifacts with a size cap.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    engine_hash: String,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Adapts `std::hash::Hash` output to sha256, so the key is stable across processes and Rust versions
/// (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only finalized through the digest")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// Opens (creating, mode 0700) the cache directory for `engine`.
    pub fn open(dir: &Path, max_bytes: u64, engine: &Engine) -> Result<Self, crate::Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                crate::Error::Engine(format!(
                    "cannot create compile cache {}: {e}",
                    dir.display()
                ))
            })?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            max_bytes,
            engine_hash: hex::encode(&hasher.0.finalize()[..8]),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// (hits, misses) since this cache was opened.
    pub fn hit_counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// The path of the entry for a wasm digest (`sha256:<hex>`).
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        let digest = digest.trim_start_matches("sha256:");
        self.dir
            .join(format!("{digest}-{}{SUFFIX}", self.engine_hash))
    }

    /// Returns the verified payload for `digest`, or `None` (after deleting a bad entry) to make the
    /// caller compile. `deserialize` turns the payload into code; when it fails the entry is deleted too.
    pub(crate) fn get<T>(
        &self,
        digest: &str,
        deserialize: impl FnOnce(&[u8]) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let path = self.entry_path(digest);
        let found = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) => {
                self.misses.fetch_add(1, Relaxed);
                return None;
            }
        };
        let loaded = verified_payload(&found)
            .ok_or_else(|| "corrupt or truncated".to_string())
            .and_then(|payload| deserialize(payload).map_err(|e| e.to_string()));
        match loaded {
            Ok(code) => {
                self.hits.fetch_add(1, Relaxed);
                // The mtime is the LRU clock; failing to bump it only makes eviction less accurate.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(code)
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "discarding compile cache entry: {why}");
                let _ = std::fs::remove_file(&path);
                self.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Stores a serialized artifact atomically, then evicts least recently used entries over the cap.
    /// Failures are logged, never fatal: the cache is an optimisation.
    pub(crate) fn put(&self, digest: &str, payload: &[u8]) {
        let path = self.entry_path(digest);
        if let Err(e) = self.write_atomically(&path, payload) {
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}");
            return;
        }
        if let Err(e) = self.evict(&path) {
            tracing::warn!(dir = %self.dir.display(), "compile cache eviction failed: {e}");
        }
    }

    fn write_atomically(&self, path: &Path, payload: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(".tmp-", &self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&(payload.len() as u64).to_le_bytes())?;
        tmp.write_all(&Sha256::digest(payload))?;
        tmp.write_all(payload)?;
        tmp.as_file().sync_data()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    fn evict(&self, keep: &Path) -> std::io::Result<()> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            let meta = entry.metadata()?;
            total += meta.len();
            entries.push((meta.modified()?, meta.len(), entry.path()));
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            std::fs::remove_file(&path)?;
            total -= len;
            tracing::debug!(path = %path.display(), "evicted compile cache entry");
        }
        Ok(())
    }
}

/// The payload if the entry's magic, length and hash all check out.
fn verified_payload(entry: &[u8]) -> Option<&[u8]> {
    let header = entry.get(..HEADER_LEN)?;
    if &header[..MAGIC.len()] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(header[MAGIC.len()..MAGIC.len() + 8].try_into().ok()?);
    let payload = &entry[HEADER_LEN..];
    (payload.len() as u64 == len && Sha256::digest(payload)[..] == header[MAGIC.len() + 8..])
        .then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> CompileCache {
        CompileCache::open(dir, max, &Engine::default()).unwrap()
    }

    #[test]
    fn round_trip_and_corruption_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let ok = |p: &[u8]| Ok(p.to_vec());
        assert_eq!(cache.get("sha256:aa", ok), None);
        cache.put("sha256:aa", b"compiled code");
        assert_eq!(
            cache.get("sha256:aa", ok).as_deref(),
            Some(&b"compiled code"[..])
        );

        let path = cache.entry_path("sha256:aa");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            cache.get("sha256:aa", ok),
            None,
            "a flipped byte must not be returned"
        );
        assert!(!path.exists(), "the corrupt entry is deleted");

        cache.put("sha256:aa", b"compiled code");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(
            cache.get("sha256:aa", ok),
            None,
            "a truncated entry must not be returned"
        );
        assert_eq!(cache.hit_counts(), (1, 3));
    }

    #[test]
    fn least_recently_used_entries_are_evicted_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let entry = HEADER_LEN as u64 + 100;
        let cache = cache(dir.path(), entry * 2);
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        cache.put("sha256:01", &[1; 100]);
        cache.put("sha256:02", &[2; 100]);
        for d in ["sha256:01", "sha256:02"] {
            std::fs::File::options()
                .append(true)
                .open(cache.entry_path(d))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        // A hit makes 01 the most recently used, so 02 goes when 03 arrives.
        assert!(cache.get("sha256:01", |p| Ok(p.len())).is_some());
        cache.put("sha256:03", &[3; 100]);
        assert!(cache.entry_path("sha256:01").exists());
        assert!(!cache.entry_path("sha256:02").exists());
        assert!(cache.entry_path("sha256:03").exists());
    }
}
