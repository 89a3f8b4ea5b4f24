//! On-disk cache of compiled code, so the second load of a binary deserializes instead of compiling.
//!
//! An entry is named `<digest>-<engine hash>.cwasm`: the sha256 of the wasm bytes plus a hash of
//! [`Engine::precompile_compatibility_hash`], so an engine with other settings never sees it. It holds exactly
//! what wasmtime serialized, so wasmtime can map the file instead of copying it into memory (code pages stay
//! shared with the page cache and load only when touched). Beside it, `<entry>.sum` holds
//! `MAGIC | payload length (u64 LE) | sha256(payload)`; a read checks length and hash before the file is handed
//! to wasmtime, so a truncated, corrupted or unsummed entry is discarded and recompiled, never executed. Writes
//! go to temp files renamed into place, the entry before its sum. A hit refreshes the entry's mtime, and the
//! least recently used entries are deleted when the directory grows past its size cap.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"WHCACHE2";
const SUM_LEN: usize = MAGIC.len() + 8 + 32;
const SUFFIX: &str = ".cwasm";
const SUM_SUFFIX: &str = ".sum";

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

    /// Returns what `deserialize` makes of the verified entry file for `digest`, or `None` (after deleting a
    /// bad entry) to make the caller compile. When `deserialize` fails the entry is deleted too.
    pub(crate) fn get<T>(
        &self,
        digest: &str,
        deserialize: impl FnOnce(&Path) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let path = self.entry_path(digest);
        if !path.exists() {
            self.misses.fetch_add(1, Relaxed);
            return None;
        }
        let loaded = match verified(&path) {
            Ok(Check::Good) => deserialize(&path).map_err(|e| e.to_string()),
            Ok(Check::Bad) => Err("corrupt or truncated".to_string()),
            Ok(Check::Unsummed) => {
                // An entry of the format before sums (or one whose sum was never written): replaced quietly,
                // so an upgrade does not warn once per cached guest.
                tracing::debug!(path = %path.display(), "replacing compile cache entry without a sum");
                remove_entry(&path);
                self.misses.fetch_add(1, Relaxed);
                return None;
            }
            Err(e) => Err(format!("unreadable: {e}")),
        };
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
                remove_entry(&path);
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
        let mut sum = Vec::with_capacity(SUM_LEN);
        sum.extend_from_slice(MAGIC);
        sum.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        sum.extend_from_slice(&Sha256::digest(payload));
        // A reader that finds the new entry beside the old sum discards both: no window serves a mismatch.
        for (bytes, to) in [(payload, path.to_path_buf()), (&sum[..], sum_path(path))] {
            let mut tmp = tempfile::NamedTempFile::with_prefix_in(".tmp-", &self.dir)?;
            tmp.write_all(bytes)?;
            tmp.as_file().sync_data()?;
            tmp.persist(to).map_err(|e| e.error)?;
        }
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
            remove_entry(&path);
            total -= len;
            tracing::debug!(path = %path.display(), "evicted compile cache entry");
        }
        Ok(())
    }
}

fn sum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(SUM_SUFFIX);
    PathBuf::from(name)
}

fn remove_entry(entry: &Path) {
    let _ = std::fs::remove_file(entry);
    let _ = std::fs::remove_file(sum_path(entry));
}

/// What checking an entry against its sum found.
enum Check {
    Good,
    /// The sum says otherwise: corrupted or truncated.
    Bad,
    /// There is no sum to check against.
    Unsummed,
}

/// Checks the entry against its sum file: magic, length and hash. Streams the entry through the hash, so
/// checking a big entry costs no more memory than a small one.
fn verified(entry: &Path) -> std::io::Result<Check> {
    let sum = match std::fs::read(sum_path(entry)) {
        Ok(sum) => sum,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Check::Unsummed),
        Err(e) => return Err(e),
    };
    if sum.len() != SUM_LEN || &sum[..MAGIC.len()] != MAGIC {
        return Ok(Check::Bad);
    }
    let len = u64::from_le_bytes(
        sum[MAGIC.len()..MAGIC.len() + 8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut file = std::fs::File::open(entry)?;
    if file.metadata()?.len() != len {
        return Ok(Check::Bad);
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(if hasher.finalize()[..] == sum[MAGIC.len() + 8..] {
        Check::Good
    } else {
        Check::Bad
    })
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
        let ok = |p: &Path| Ok(std::fs::read(p)?);
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

        cache.put("sha256:aa", b"compiled code");
        std::fs::remove_file(sum_path(&path)).unwrap();
        assert_eq!(cache.get("sha256:aa", ok), None, "an entry without its sum");
        assert!(!path.exists());
    }

    #[test]
    fn least_recently_used_entries_are_evicted_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let entry = 100;
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
        assert!(cache.get("sha256:01", |p| Ok(p.to_path_buf())).is_some());
        cache.put("sha256:03", &[3; 100]);
        assert!(cache.entry_path("sha256:01").exists());
        assert!(!cache.entry_path("sha256:02").exists());
        assert!(!sum_path(&cache.entry_path("sha256:02")).exists());
        assert!(cache.entry_path("sha256:03").exists());
    }
}
