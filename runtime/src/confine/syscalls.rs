//! The system calls a confined process (the shim server) may make: the seccomp allowlist.
//!
//! The list is what wasmtime (JIT code, pooling allocator, copy-on-write memory images), tokio and hyper
//! (epoll, sockets), the shim (ttrpc, fifos, the compile cache, network namespaces) and glibc under them
//! were seen to call across the whole test suite, run with `[security] seccomp = "log"` (which logs every
//! call outside this list to the kernel log instead of refusing it). Keep it that way: a call is added here
//! only with the code that needs it, in the group that says why.
//!
//! A call outside the list fails with `EPERM` and does nothing. Calls that would let code running in the
//! shim reach beyond it are narrowed by their arguments: threads only (no `fork`), the network namespace
//! only, signals only to this process, `prlimit` read-only, and the two IP socket families.

use seccompiler::{
    SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
};
use std::collections::BTreeMap;

/// Calls allowed whatever their arguments, by group.
const ANY_ARGUMENTS: &[(&str, &[libc::c_long])] = &[
    (
        "memory: linear memories, code, stacks, allocator",
        &[
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_memfd_create,
            libc::SYS_membarrier,
            libc::SYS_mincore,
            libc::SYS_msync,
        ],
    ),
    (
        "threads and their synchronisation (in `enforce`, clone3 is answered ENOSYS first: see `install_filters`)",
        &[
            libc::SYS_clone3,
            libc::SYS_futex,
            libc::SYS_set_robust_list,
            libc::SYS_get_robust_list,
            libc::SYS_rseq,
            libc::SYS_set_tid_address,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_getcpu,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_getppid,
            libc::SYS_restart_syscall,
        ],
    ),
    (
        "signals: handlers for wasm traps, masks, alternate stacks",
        &[
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
        ],
    ),
    (
        "time and CPU accounting (fuel and epoch throttling, timeouts)",
        &[
            libc::SYS_clock_gettime,
            libc::SYS_clock_getres,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettimeofday,
            libc::SYS_getrusage,
            libc::SYS_times,
        ],
    ),
    (
        "file descriptors: sockets, fifos, files, event loops",
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_lseek,
            libc::SYS_close,
            libc::SYS_close_range,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_fcntl,
            libc::SYS_pipe2,
            libc::SYS_eventfd2,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_pwait2,
            libc::SYS_ppoll,
            libc::SYS_pselect6,
            libc::SYS_sendfile,
            libc::SYS_splice,
            libc::SYS_copy_file_range,
        ],
    ),
    (
        "files: bundles, layers, fifos, the compile cache, guests' preopened directories",
        &[
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_statfs,
            libc::SYS_fstatfs,
            libc::SYS_readlinkat,
            libc::SYS_getdents64,
            libc::SYS_mkdirat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_linkat,
            libc::SYS_symlinkat,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fadvise64,
            libc::SYS_utimensat,
            libc::SYS_flock,
            libc::SYS_getcwd,
            libc::SYS_fgetxattr,
            libc::SYS_getxattr,
            libc::SYS_lgetxattr,
            libc::SYS_umask,
        ],
    ),
    (
        "sockets: ttrpc, the broker's pairs, services' listeners and connections",
        &[
            libc::SYS_socketpair,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendmmsg,
            libc::SYS_recvmmsg,
            libc::SYS_shutdown,
        ],
    ),
    (
        "process facts read by glibc, tokio and the shim",
        &[
            libc::SYS_getrandom,
            libc::SYS_uname,
            libc::SYS_sysinfo,
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_getgid,
            libc::SYS_getegid,
            libc::SYS_getgroups,
            libc::SYS_capget,
            libc::SYS_wait4,
            libc::SYS_waitid,
        ],
    ),
    (
        "a thread taking on a container user's file rights for a guest's poll, and giving them back \
         (crate::identity): file-system ids and groups only, never the process's uid or gid",
        &[libc::SYS_setfsuid, libc::SYS_setfsgid, libc::SYS_setgroups],
    ),
    #[cfg(target_arch = "x86_64")]
    (
        "x86_64's older spellings, which glibc and std still use there",
        &[
            libc::SYS_open,
            libc::SYS_stat,
            libc::SYS_lstat,
            libc::SYS_poll,
            libc::SYS_select,
            libc::SYS_epoll_wait,
            libc::SYS_readlink,
            libc::SYS_mkdir,
            libc::SYS_rmdir,
            libc::SYS_unlink,
            libc::SYS_rename,
            libc::SYS_access,
            libc::SYS_dup2,
            libc::SYS_pipe,
            libc::SYS_arch_prctl,
            libc::SYS_getrlimit,
        ],
    ),
];

/// `prctl` options: naming threads and anonymous mappings, and reading what they are.
pub(super) const PRCTL_OPTIONS: &[libc::c_int] = &[
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_DUMPABLE,
    libc::PR_SET_VMA,
    libc::PR_CAPBSET_READ,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_GET_SECCOMP,
];

/// `PAGEMAP_SCAN` (`_IOWR('f', 16, struct pm_scan_arg)`, Linux 6.7): how wasmtime's pooling allocator
/// finds the pages an instance wrote, to reset only those.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// `ioctl` requests: non-blocking and close-on-exec flags, what tokio and std ask of a descriptor, and
/// wasmtime's scan of dirty pages.
pub(super) const IOCTL_REQUESTS: &[libc::c_ulong] = &[
    PAGEMAP_SCAN,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
];

/// Socket families: IP only (services, outbound requests, name lookups). No new unix socket: a confined
/// process reaches nothing local by path (containerd's sockets above all); the sockets it serves on and the
/// pairs it talks through are made before it is confined.
pub(super) const SOCKET_FAMILIES: &[libc::c_int] = &[libc::AF_INET, libc::AF_INET6];

/// The allowlist as seccompiler rules: a call with no rules is allowed whatever its arguments; one with
/// rules, when any rule matches.
pub fn allowlist() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ANY_ARGUMENTS
        .iter()
        .flat_map(|(_, calls)| calls.iter())
        .map(|&call| (call, Vec::new()))
        .collect();
    let pid = std::process::id() as u64;
    let clone_thread = libc::CLONE_THREAD as u64;
    let network_namespace = libc::CLONE_NEWNET as u64;
    let narrowed = [
        // Threads only: no new processes.
        (
            libc::SYS_clone,
            vec![rule(
                0,
                Len::Qword,
                Op::MaskedEq(clone_thread),
                clone_thread,
            )],
        ),
        // Entering and creating network namespaces is the shim's one use of CAP_SYS_ADMIN.
        (
            libc::SYS_setns,
            vec![rule(1, Len::Dword, Op::Eq, network_namespace)],
        ),
        (
            libc::SYS_unshare,
            vec![rule(0, Len::Dword, Op::Eq, network_namespace)],
        ),
        // Signals to this process only (std's abort, tokio's wake-ups): root may signal any root process.
        (libc::SYS_kill, vec![rule(0, Len::Dword, Op::Eq, pid)]),
        (libc::SYS_tgkill, vec![rule(0, Len::Dword, Op::Eq, pid)]),
        // Reading limits, never setting them.
        (libc::SYS_prlimit64, vec![rule(2, Len::Qword, Op::Eq, 0)]),
        (
            libc::SYS_prctl,
            one_of(0, PRCTL_OPTIONS.iter().map(|&o| o as u64)),
        ),
        (libc::SYS_ioctl, one_of(1, IOCTL_REQUESTS.iter().copied())),
        (
            libc::SYS_socket,
            one_of(0, SOCKET_FAMILIES.iter().map(|&f| f as u64)),
        ),
    ];
    rules.extend(narrowed);
    rules
}

/// A rule on one argument; `len` is the argument's C width (the kernel truncates an `int` argument, so
/// only its low 32 bits may be compared; a pointer is compared whole).
fn rule(arg: u8, len: Len, op: Op, value: u64) -> SeccompRule {
    SeccompRule::new(vec![
        Cond::new(arg, len, op, value).expect("argument index and width are valid"),
    ])
    .expect("a one-condition rule is valid")
}

fn one_of(arg: u8, values: impl Iterator<Item = u64>) -> Vec<SeccompRule> {
    values
        .map(|value| rule(arg, Len::Dword, Op::Eq, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_a_tenant_escape_would_want_are_not_on_the_list() {
        let rules = allowlist();
        for (name, call) in [
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("ptrace", libc::SYS_ptrace),
            ("bpf", libc::SYS_bpf),
            ("init_module", libc::SYS_init_module),
            ("finit_module", libc::SYS_finit_module),
            ("kexec_load", libc::SYS_kexec_load),
            ("execve", libc::SYS_execve),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("setuid", libc::SYS_setuid),
            ("setresuid", libc::SYS_setresuid),
            ("setgid", libc::SYS_setgid),
            ("chroot", libc::SYS_chroot),
        ] {
            assert!(!rules.contains_key(&call), "{name} is allowed");
        }
    }
}
