//! On-disk cache of compiled code, so the second load of a binary deserializes instead of compiling.
//!
//! An entry is named `<digest>-<engine hash>.cwasm`: the sha256 of the wasm bytes plus a hash of
//! [`Engine::precompile_compatibility_hash`], so an engine with other settings never sees it. It holds exactly
//! what wasmtime serialized, so wasmtime can map the file instead of copying it into memory (code pages stay
//! shared with the page cache and load only when touched). Beside it, `<entry>.sum` holds
//! `MAGIC | payload length (u64 LE) | HMAC-SHA256(key, entry name | payload)`; a read checks length and MAC
//! before the file is handed to wasmtime, so a truncated, corrupted, unsummed or forged entry, or one copied
//! under another name, is discarded and recompiled, never executed. Writes go to temp files renamed into
//! place, the entry before its sum. A hit refreshes the entry's mtime, and the least recently used entries are
//! deleted when the directory grows past its size cap.
//!
//! Cached entries are native code this process runs, so the directory is trusted only when it is a real
//! directory owned by this user and writable by nobody else (group- or world-writable modes are repaired,
//! another owner is refused), and the MAC key is a random `key` file inside it, readable by this user alone:
//! whoever can forge an entry could already read that key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"WHCACHE3";
/// The file holding the MAC key, inside the cache directory.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
const SUM_LEN: usize = MAGIC.len() + 8 + 32;
const SUFFIX: &str = ".cwasm";
const SUM_SUFFIX: &str = ".sum";

/// A directory of compiled artifacts with a size cap.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    engine_hash: String,
    key: [u8; KEY_LEN],
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CompileCache {
    /// Opens (creating, mode 0700) the cache directory for `engine`. A directory another user owns, or that
    /// is a symlink, is refused; one writable by group or others is made 0700.
    pub fn open(dir: &Path, max_bytes: u64, engine: &Engine) -> Result<Self, crate::Error> {
        use std::os::unix::fs::DirBuilderExt;
        let fail =
            |why: String| crate::Error::Engine(format!("compile cache {}: {why}", dir.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create: {e}")))?;
        secure_dir(dir).map_err(fail)?;
        let key = load_or_create_key(dir).map_err(|e| fail(format!("{KEY_FILE}: {e}")))?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            max_bytes,
            engine_hash: crate::precompiled::engine_hash(engine),
            key,
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
        let loaded = match verified(&path, &self.key) {
            Ok(Check::Good) => deserialize(&path).map_err(|e| e.to_string()),
            Ok(Check::Bad) => {
                Err("it does not match its sum (corrupt, truncated or forged)".to_string())
            }
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
        let mut mac = entry_mac(&self.key, path);
        mac.update(payload);
        sum.extend_from_slice(&mac.finalize().into_bytes());
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

/// The MAC of an entry, keyed by the cache's key and bound to the entry's name (wasm digest and engine), so an
/// entry renamed to another digest fails its check.
fn entry_mac(key: &[u8; KEY_LEN], entry: &Path) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    let name = entry.file_name().unwrap_or_default().as_encoded_bytes();
    mac.update(&(name.len() as u64).to_le_bytes());
    mac.update(name);
    mac
}

/// Refuses a cache directory that is a symlink or another user's; makes one writable by others private.
fn secure_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_dir() {
        return Err("is not a directory (a symlink is not trusted)".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by this process's uid {me}: compiled code from it would run here",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o7777), "compile cache was writable by others; made 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("is writable by others and cannot be made 0700: {e}"))?;
    }
    Ok(())
}

/// The cache's MAC key: read from its `key` file when that is a private regular file of this user, else made
/// anew (with every entry dropped, since entries signed by a key others may have read are not trusted).
fn load_or_create_key(dir: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    let path = dir.join(KEY_FILE);
    let me = rustix::process::geteuid().as_raw();
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        let private = meta.is_file()
            && meta.uid() == me
            && meta.mode() & 0o077 == 0
            && meta.len() == KEY_LEN as u64;
        if private {
            let bytes = std::fs::read(&path)?;
            if let Ok(key) = <[u8; KEY_LEN]>::try_from(bytes) {
                return Ok(key);
            }
        }
        tracing::warn!(path = %path.display(), "compile cache key is not a private file of this user; making a new key and dropping every entry");
        std::fs::remove_file(&path)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?.path();
            if entry.to_string_lossy().ends_with(SUFFIX) {
                remove_entry(&entry);
            }
        }
    }
    let mut key = [0u8; KEY_LEN];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-key-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(&key)?;
    tmp.as_file().sync_data()?;
    // Two processes making a key at once: the first wins, and the second reads the winner's.
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(key),
        Err(_) => {
            let bytes = std::fs::File::options()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .and_then(|mut f| {
                    let mut bytes = [0u8; KEY_LEN];
                    std::io::Read::read_exact(&mut f, &mut bytes)?;
                    Ok(bytes)
                })?;
            Ok(bytes)
        }
    }
}

/// Checks the entry against its sum file: magic, length and MAC. Streams the entry through the MAC, so
/// checking a big entry costs no more memory than a small one.
fn verified(entry: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<Check> {
    let sum = match std::fs::read(sum_path(entry)) {
        Ok(sum) => sum,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Check::Unsummed),
        Err(e) => return Err(e),
    };
    if sum.len() != SUM_LEN || &sum[..MAGIC.len()] != MAGIC {
        // A sum of an earlier format is as good as none: replaced quietly.
        return Ok(if sum.starts_with(b"WHCACHE") {
            Check::Unsummed
        } else {
            Check::Bad
        });
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
    let mut mac = MacWriter(entry_mac(key, entry));
    std::io::copy(&mut file, &mut mac)?;
    Ok(match mac.0.verify_slice(&sum[MAGIC.len() + 8..]) {
        Ok(()) => Check::Good,
        Err(_) => Check::Bad,
    })
}

/// Feeds what is copied into it to a MAC.
struct MacWriter(Hmac<Sha256>);

impl Write for MacWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    fn an_entry_copied_under_another_digest_or_signed_with_another_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let ok = |p: &Path| Ok(std::fs::read(p)?);
        cache.put("sha256:aa", b"code of aa");
        let (aa, bb) = (cache.entry_path("sha256:aa"), cache.entry_path("sha256:bb"));
        std::fs::copy(&aa, &bb).unwrap();
        std::fs::copy(sum_path(&aa), sum_path(&bb)).unwrap();
        assert_eq!(
            cache.get("sha256:bb", ok),
            None,
            "aa's code under bb's name"
        );
        assert!(!bb.exists(), "the forged entry is deleted");

        // A key readable by others is replaced, and what it signed is dropped.
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = super::CompileCache::open(dir.path(), 1 << 20, &Engine::default()).unwrap();
        assert_ne!(reopened.key, cache.key);
        assert!(
            !aa.exists(),
            "entries signed with the exposed key are dropped"
        );
        assert_eq!(
            std::fs::metadata(&key).unwrap().mode() & 0o777,
            0o600,
            "the new key is private"
        );
        cache.put("sha256:aa", b"code of aa");
        assert_eq!(
            reopened.get("sha256:aa", ok),
            None,
            "signed with the old key"
        );
    }

    #[test]
    fn the_directory_must_be_this_users_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = |path: &Path| super::CompileCache::open(path, 1 << 20, &Engine::default());
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        open(&shared).unwrap();
        assert_eq!(
            std::fs::metadata(&shared).unwrap().mode() & 0o777,
            0o700,
            "repaired"
        );

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        let err = open(&link).unwrap_err().to_string();
        assert!(
            err.contains("link: is not a directory (a symlink is not trusted)"),
            "{err}"
        );

        // Someone else's directory: root can make one; anyone else has "/" at hand.
        let theirs = if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            theirs
        } else {
            PathBuf::from("/")
        };
        let err = open(&theirs).unwrap_err().to_string();
        assert!(err.contains("is owned by uid"), "{err}");
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
