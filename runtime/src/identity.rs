//! The user a guest's file access is checked as: the container's `process.user`, as under runc.
//!
//! One shim process serves every container of a pod, as root, so it cannot become a container's user.
//! Linux keeps credentials per thread, though, and a path is checked against the thread's file-system
//! ids and supplementary groups only. So while a task of a guest whose container names another user is
//! polled, its thread takes that user's file-system uid, gid and groups, and gives them back when the poll
//! ends. The guest's path operations run inline on that thread (the WASI context is built with
//! `allow_blocking_current_thread`), so the kernel checks them as the container's user, and files they
//! create are owned by it. Moving the file-system uid away from 0 also clears the thread's file
//! capabilities (`DAC_OVERRIDE`, `FOWNER`, …) until it moves back.
//!
//! The calls are the raw system calls: glibc's `setgroups` would change every thread of the process.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// A container's user, as far as file access goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

impl FileUser {
    /// Takes on this user's file rights and gives them back, to find out at load time (with a clear error)
    /// whether this process can, rather than on a guest's first poll. It needs `CAP_SETUID` and
    /// `CAP_SETGID`.
    pub fn check(&self) -> io::Result<()> {
        Switched::enter(self).map(drop)
    }
}

/// The process's own file rights, read before the first switch anywhere (so from a thread that has its
/// own), which every switch gives back.
struct ProcessRights {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

static PROCESS: OnceLock<ProcessRights> = OnceLock::new();

thread_local! {
    /// Whether this thread has a user's rights, for the length of a guest's poll.
    static SWITCHED: Cell<bool> = const { Cell::new(false) };
}

fn process() -> &'static ProcessRights {
    PROCESS.get_or_init(|| ProcessRights {
        // -1 changes nothing and answers the current id.
        uid: set_fsuid(u32::MAX),
        gid: set_fsgid(u32::MAX),
        groups: groups(),
    })
}

/// Sets the thread's file-system uid; answers the previous one (the kernel reports no error).
fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes an integer and touches no memory.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

/// Sets the thread's file-system gid; answers the previous one.
fn set_fsgid(gid: u32) -> u32 {
    // SAFETY: setfsgid takes an integer and touches no memory.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// Sets this thread's supplementary groups (only this thread's: the raw call, not glibc's).
fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, which the kernel only reads.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This thread's supplementary groups.
fn groups() -> Vec<u32> {
    // SAFETY: a zero-sized call only counts; the second fills at most `n` entries of a buffer that long.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut()).max(0);
        let mut groups = vec![0; n as usize];
        let n = libc::getgroups(n, groups.as_mut_ptr()).max(0);
        groups.truncate(n as usize);
        groups
    }
}

/// Gives this thread the process's own file rights back.
fn restore() {
    let own = process();
    set_fsuid(own.uid);
    set_fsgid(own.gid);
    // Cannot fail where taking a user's groups succeeded: the same capability.
    let _ = set_groups(&own.groups);
    SWITCHED.set(false);
}

/// Gives a thread that is starting the process's own file rights. A new thread inherits its creator's
/// credentials, and a pool may start one (tokio's blocking threads do) while a guest's task is polled with
/// a user's rights: every thread pool that runs guest tasks calls this from its thread-start hook.
pub fn reset_thread_file_rights() {
    if PROCESS.get().is_some() {
        restore();
    }
}

/// A thread that has taken on a user's file rights; dropping it gives them back.
struct Switched;

impl Switched {
    fn enter(user: &FileUser) -> io::Result<Switched> {
        process();
        set_groups(&user.groups)?;
        set_fsgid(user.gid);
        set_fsuid(user.uid);
        let switched = Switched;
        SWITCHED.set(true);
        if set_fsuid(u32::MAX) != user.uid || set_fsgid(u32::MAX) != user.gid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(switched)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        restore();
    }
}

/// Runs `f` with the process's own file rights, inside a guest's poll: for what the shim opens on a
/// guest's behalf as runc would before handing it over, such as a volume's directory.
pub(crate) fn as_shim<R>(f: impl FnOnce() -> R) -> R {
    if !SWITCHED.get() {
        return f();
    }
    let user = FileUser {
        uid: set_fsuid(u32::MAX),
        gid: set_fsgid(u32::MAX),
        groups: groups(),
    };
    restore();
    let result = f();
    // The outer poll's guard gives the process's rights back when the poll ends.
    let switched = Switched::enter(&user)
        .unwrap_or_else(|e| panic!("cannot take back the file rights of user {}: {e}", user.uid));
    std::mem::forget(switched);
    result
}

/// A future polled with a user's file rights, or the process's when there is none.
pub(crate) struct AsUser<F> {
    inner: F,
    user: Option<Arc<FileUser>>,
}

impl<F: Future> AsUser<F> {
    pub(crate) fn new(inner: F, user: Option<Arc<FileUser>>) -> Self {
        AsUser { inner, user }
    }
}

impl<F: Future> Future for AsUser<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self`, and `AsUser` has no
        // `Drop` and is `Unpin` only when `F` is.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let Some(user) = this.user.as_deref() else {
            return inner.poll(cx);
        };
        // Fail closed: a guest polled with the process's rights would touch files as root. The service
        // checked at load that switching works, so this is a bug, and panicking ends only this task.
        let _switched = Switched::enter(user)
            .unwrap_or_else(|e| panic!("cannot take on the file rights of user {}: {e}", user.uid));
        inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// Polls `future` once; the futures here never wait.
    fn poll_once<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(value) => value,
            Poll::Pending => unreachable!("nothing here waits"),
        }
    }

    fn read_as(user: Option<Arc<FileUser>>, path: &Path) -> io::Result<String> {
        let path = path.to_path_buf();
        poll_once(AsUser::new(
            async move { std::fs::read_to_string(path) },
            user,
        ))
    }

    fn user(groups: Vec<u32>) -> Option<Arc<FileUser>> {
        Some(Arc::new(FileUser {
            uid: 1000,
            gid: 1000,
            groups,
        }))
    }

    /// As root (CI), the kernel denies what the user may not read; without root, the check that a service
    /// runs at load refuses, so no guest would be polled with the process's rights instead.
    #[test]
    fn a_poll_as_a_user_reads_only_what_that_user_may() {
        if !rustix::process::geteuid().is_root() {
            let refused = user(vec![]).unwrap().check().unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32, gid: u32| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, "text").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
            path
        };
        let (secret, team) = (file("secret", 0o600, 0), file("team", 0o640, 2000));

        let denied = read_as(user(vec![]), &secret).unwrap_err();
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        assert!(read_as(user(vec![]), &team).is_err());
        assert_eq!(read_as(user(vec![2000]), &team).unwrap(), "text");
        assert_eq!(read_as(None, &secret).unwrap(), "text");
        // The thread has the shim's rights back after each poll…
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "text");
        // …and `as_shim` lends them inside a user's poll, then takes the user's back.
        let (lent, after) = poll_once(AsUser::new(
            async {
                let lent = as_shim(|| std::fs::read_to_string(&secret));
                (lent, std::fs::read_to_string(&secret))
            },
            user(vec![]),
        ));
        assert_eq!(lent.unwrap(), "text");
        assert!(after.is_err(), "the user's rights came back after as_shim");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "text");

        // A thread started inside a user's poll inherits the user's rights, until its start hook resets them.
        let (inherited, reset) = poll_once(AsUser::new(
            async {
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| {
                            let inherited = std::fs::read_to_string(&secret).is_err();
                            reset_thread_file_rights();
                            (inherited, std::fs::read_to_string(&secret))
                        })
                        .join()
                        .unwrap()
                })
            },
            user(vec![]),
        ));
        assert!(inherited);
        assert_eq!(reset.unwrap(), "text");
    }
}
