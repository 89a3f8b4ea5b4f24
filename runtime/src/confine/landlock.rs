//! Landlock (the kernel's unprivileged access-control LSM) for the file access of a confined process: once
//! applied, the process and every thread it creates afterwards can open, create or remove files only beneath
//! the directories (or at the files) it was given, whatever its capabilities. Rules cannot be widened later,
//! so the caller names everything up front; which paths is its policy.
//!
//! Landlock also keeps the process from `ptrace`-ing (and reading the `/proc` files of) processes outside
//! its domain, and, from ABI 6, from signalling them or connecting to their abstract unix sockets.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How a path may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files and list directories.
    Read,
    /// Read, write, create, remove and rename (not execute).
    ReadWrite,
}

/// The paths a confined process keeps, each with what it may do there. A path that does not exist when the
/// rules are applied is skipped (nothing created there later is reachable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRules {
    /// `(path, access)`, in the order given.
    pub paths: Vec<(PathBuf, Access)>,
}

impl FileRules {
    /// Adds `path` with `access`.
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: Access) {
        self.paths.push((path.into(), access));
    }

    /// These rules with each path's symlinks resolved, as the kernel resolves them when the rules are
    /// applied: what [`FileRules::reaches`] compares with.
    pub fn resolved(&self) -> FileRules {
        let paths = self.paths.iter();
        FileRules {
            paths: paths.map(|(p, a)| (resolve_existing(p), *a)).collect(),
        }
    }

    /// Whether `path` lies beneath a rule that gives at least `access`. The comparison is by path, after
    /// resolving the symlinks of `path` (its deepest existing ancestor), as the kernel's check is by the
    /// directories a file sits in; the rules are compared as they are, so give [`FileRules::resolved`] ones.
    /// A path this answers `false` for would be refused by the kernel.
    pub fn reaches(&self, path: &Path, access: Access) -> bool {
        let resolved = resolve_existing(path);
        self.paths.iter().any(|(rule, given)| {
            (*given == Access::ReadWrite || access == Access::Read) && resolved.starts_with(rule)
        })
    }
}

/// `path` with its deepest existing ancestor's symlinks resolved and the rest appended.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut current = path;
    loop {
        if let Ok(real) = current.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                current = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// `REMOVE_DIR` … `MAKE_SYM`: the directory-changing rights of ABI 1.
const CHANGE_DIR: u64 = 0b1_1111_1111 << 4;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;
/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL` (ABI 6).
const SCOPES: u64 = 0b11;
/// The rights a rule on a file (rather than a directory) may carry.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version this kernel offers; `None` when it has no Landlock (older than 5.13, or not
/// in the kernel's `lsm=` list).
pub fn abi() -> Option<u32> {
    // SAFETY: the documented probe: no attribute, size 0, the VERSION flag.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            1u32,
        )
    };
    u32::try_from(version).ok().filter(|v| *v > 0)
}

/// The file-system rights ABI `abi` handles.
fn handled_fs(abi: u32) -> u64 {
    let mut rights = EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | CHANGE_DIR;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

/// Restricts this thread, and the threads it creates from now on, to `rules`. Call it while the process has
/// one thread: threads that already run keep their access. Returns the ABI version used.
pub fn restrict(rules: &FileRules) -> Result<u32, String> {
    let abi = abi().ok_or(
        "this kernel has no Landlock (Linux 5.13 or later with landlock in its lsm= list)",
    )?;
    let handled = handled_fs(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: if abi >= 6 { SCOPES } else { 0 },
    };
    // SAFETY: `attr` is a live, correctly laid out ruleset attribute of the size passed.
    let ruleset = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    let ruleset =
        owned_fd(ruleset).map_err(|e| format!("cannot create a Landlock ruleset: {e}"))?;
    for (path, access) in &rules.paths {
        add_rule(&ruleset, path, *access, handled)?;
    }
    // SAFETY: a plain flag-setting call.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot set no-new-privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `ruleset` is the Landlock ruleset fd created above.
    let restricted =
        unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if restricted != 0 {
        return Err(format!(
            "cannot apply the Landlock ruleset: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(abi)
}

fn add_rule(ruleset: &OwnedFd, path: &Path, access: Access, handled: u64) -> Result<(), String> {
    let file = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "not in the Landlock rules: it does not exist");
            return Ok(());
        }
        Err(e) => return Err(format!("Landlock rule for {}: {e}", path.display())),
    };
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    let mut allowed = match access {
        Access::Read => READ_FILE | READ_DIR,
        Access::ReadWrite => handled & !EXECUTE,
    } & handled;
    if !is_dir {
        allowed &= FILE_RIGHTS;
    }
    let attr = PathBeneathAttr {
        allowed_access: allowed,
        parent_fd: file.as_raw_fd(),
    };
    // SAFETY: rule type 1 (LANDLOCK_RULE_PATH_BENEATH) with a live attribute of that type.
    let added = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            1u32,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if added != 0 {
        return Err(format!(
            "Landlock rule for {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn owned_fd(result: libc::c_long) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative result of a call that returns a new fd owned by the caller.
    Ok(unsafe { OwnedFd::from_raw_fd(result as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaches_compares_resolved_paths_and_access() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("in");
        std::fs::create_dir(&inside).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&inside, &link).unwrap();
        let mut rules = FileRules::default();
        rules.allow(&link, Access::Read);
        let rules = rules.resolved();
        assert_eq!(rules.paths[0].0, inside.canonicalize().unwrap());
        assert!(rules.reaches(&inside.join("not-yet/file"), Access::Read));
        assert!(
            rules.reaches(&link.join("file"), Access::Read),
            "through a symlink"
        );
        assert!(!rules.reaches(&inside, Access::ReadWrite), "read-only");
        assert!(
            !rules.reaches(&dir.path().join("inner"), Access::Read),
            "a sibling with the same prefix"
        );
        assert!(!rules.reaches(Path::new("/etc/passwd"), Access::Read));
    }

    #[test]
    fn a_restricted_thread_opens_only_what_its_rules_allow() {
        let Some(_) = abi() else {
            panic!("this test needs a kernel with Landlock");
        };
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let denied = dir.path().join("denied");
        for d in [&allowed, &denied] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("file"), "x").unwrap();
        }
        let readable = dir.path().join("readable");
        std::fs::write(&readable, "r").unwrap();
        // A thread of its own: the rules hold for it alone, not for the test harness.
        let results = std::thread::spawn(move || {
            let mut rules = FileRules::default();
            rules.allow(&allowed, Access::ReadWrite);
            rules.allow(&readable, Access::Read);
            rules.allow(dir.path().join("missing"), Access::Read);
            restrict(&rules).unwrap();
            let denied_read = std::fs::read(denied.join("file")).unwrap_err().kind();
            (
                std::fs::read(allowed.join("file")).is_ok(),
                std::fs::write(allowed.join("new"), "y").is_ok(),
                std::fs::read(&readable).is_ok(),
                std::fs::write(&readable, "w").is_err(),
                denied_read,
                std::fs::read("/etc/passwd").is_err(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(
            results,
            (
                true,
                true,
                true,
                true,
                std::io::ErrorKind::PermissionDenied,
                true
            )
        );
    }
}
