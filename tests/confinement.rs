//! The shim server's confinement, seen from outside as an operator (or an attacker who took it over) would:
//! its capabilities and seccomp state in `/proc`, and what its kernel answers when it makes calls outside
//! the allowlist, which this test makes it make.

use std::time::Duration;
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::netns::NetNs;

/// The capabilities the server keeps (shim/src/confine.rs): DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER,
/// SETGID, SETUID, NET_BIND_SERVICE, SYS_ADMIN.
const KEPT: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 7) | (1 << 10) | (1 << 21);

/// A field of `/proc/PID/status`.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The shim server that containerd started for container `id`.
fn shim_of(containerd: &Containerd, id: &str) -> i32 {
    let flag = format!("-id\0{id}\0");
    containerd
        .shim_pids()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&flag)
        })
        .unwrap_or_else(|| panic!("no shim server for {id}"))
}

fn capabilities(pid: i32, set: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, set), 16).unwrap()
}

/// Starts `hello` in a network namespace the test made (so the server has entered one), and returns its
/// shim server's PID and address.
fn serve_in_namespace(
    containerd: &Containerd,
    netns: &NetNs,
    id: &str,
    extra: &[&str],
) -> (i32, std::net::SocketAddr) {
    let image = import_example(containerd, "hello");
    let port = free_port();
    let port_env = format!("PORT={port}");
    let namespace = format!("network:{}", netns.path());
    let mut args = vec!["--with-ns", &namespace, "--env", &port_env];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&image, id]);
    let output = ctr_run(containerd, "-d", &args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let addr = format!("{}.2:{port}", netns.prefix).parse().unwrap();
    wait_for_200(addr);
    let pids = containerd.shim_pids();
    assert_eq!(pids.len(), 1, "one shim server: {pids:?}");
    (pids[0], addr)
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_shim_server_keeps_seven_capabilities_and_its_kernel_refuses_calls_outside_the_allowlist() {
    let containerd = Containerd::start();
    let netns = NetNs::create("wasmhttp-confine", "10.213.81", "whcnf");
    let (pid, addr) = serve_in_namespace(&containerd, &netns, "confined", &[]);

    assert_eq!(status_field(pid, "Seccomp"), "2", "filter mode");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(capabilities(pid, set), KEPT, "{set} of the shim server");
    }
    assert_eq!(capabilities(pid, "CapInh"), 0);
    assert_eq!(capabilities(pid, "CapAmb"), 0);
    // Threads started after the drop (the engine's HTTP workers) have the same sets.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        if !status.is_empty() {
            assert!(
                status.contains(&format!("CapEff:\t{KEPT:016x}")),
                "thread {tid}: {status}"
            );
            assert!(status.contains("Seccomp:\t2"), "thread {tid}");
        }
    }

    // Each call with arguments that would not fail with EPERM unless refused: with CAP_SYS_ADMIN kept,
    // mount of NULLs fails with EFAULT; PTRACE_PEEKDATA of pid 0 with ESRCH; bpf with an unknown
    // command with EINVAL.
    let refused = syscalls_in(
        pid,
        &[
            ("mount", nix::libc::SYS_mount, [0; 5]),
            ("ptrace", nix::libc::SYS_ptrace, [2, 0, 0, 0, 0]),
            ("bpf", nix::libc::SYS_bpf, [0xffff, 0, 0, 0, 0]),
            ("init_module", nix::libc::SYS_init_module, [0; 5]),
            ("kexec_load", nix::libc::SYS_kexec_load, [0; 5]),
            (
                "unshare(CLONE_NEWNS)",
                nix::libc::SYS_unshare,
                [0x20000, 0, 0, 0, 0],
            ),
            ("getpid", nix::libc::SYS_getpid, [0; 5]),
            // No unix socket, so no way to containerd's API (its broker has that); IP sockets serve.
            ("socket(AF_UNIX)", nix::libc::SYS_socket, [1, 1, 0, 0, 0]),
            ("socket(AF_INET)", nix::libc::SYS_socket, [2, 1, 0, 0, 0]),
            // Answered ENOSYS, so that glibc makes threads with clone, whose flags the filter checks
            // (unfiltered, a NULL clone_args of size 0 is EINVAL).
            ("clone3", nix::libc::SYS_clone3, [0; 5]),
        ],
    );
    for (name, result) in refused[..6].iter().chain(&refused[7..8]) {
        assert_eq!(*result, -i64::from(nix::libc::EPERM), "{name}");
    }
    assert_eq!(refused[6].1, i64::from(pid), "an allowed call still works");
    assert!(refused[8].1 >= 0, "an IP socket: {:?}", refused[8]);
    assert_eq!(refused[9].1, -i64::from(nix::libc::ENOSYS), "clone3");
    // The broker, which does hold containerd's API, is the server's child and runs no guest code.
    let brokers = containerd.broker_pids();
    assert_eq!(brokers.len(), 1, "one broker: {brokers:?}");
    assert_eq!(status_field(brokers[0], "PPid"), pid.to_string());

    // Landlock: a file of the host's, readable by root (DAC_OVERRIDE would open even a 0600 one), is out of
    // reach; the container's own bundle (the server's working directory) and /proc are not.
    let host_file = tempfile::NamedTempFile::new().unwrap();
    let opened = opens_in(
        pid,
        &[
            host_file.path().to_str().unwrap(),
            "/etc/passwd",
            "config.json",
            "/proc/self/status",
        ],
    );
    let eacces = -i64::from(nix::libc::EACCES);
    assert_eq!(opened[..2], [eacces, eacces], "host files: {opened:?}");
    assert!(
        opened[2] >= 0 && opened[3] >= 0,
        "its bundle and /proc: {opened:?}"
    );

    // The server survived being made to try: it still serves and stops on request.
    assert_eq!(wasmhttp_tests::get(addr, "/").status, 200);
    kill_now(&containerd, "confined");
}

#[test]
fn the_node_configuration_turns_the_filter_off_but_not_the_capability_drop() {
    let containerd = Containerd::start();
    let netns = NetNs::create("wasmhttp-unconfined", "10.213.82", "whunc");
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[security]\nseccomp = \"off\"\n").unwrap();
    let (pid, _) = serve_in_namespace(
        &containerd,
        &netns,
        "unfiltered",
        &["--runtime-config-path", node.to_str().unwrap()],
    );
    assert_eq!(status_field(pid, "Seccomp"), "0");
    assert_eq!(capabilities(pid, "CapEff"), KEPT);
    kill_now(&containerd, "unfiltered");
}

/// Makes the main thread of process `pid` (idle in a system call, as the shim server's event loop is) make
/// each `(name, number, arguments)` call, and returns what each returned. The thread's registers are put
/// back afterwards, so it resumes its own call as after a signal.
#[cfg(target_arch = "x86_64")]
fn syscalls_in(pid: i32, calls: &[Call]) -> Vec<(&'static str, i64)> {
    syscalls_with_strings_in(pid, &[], |_| calls.to_vec())
}

/// A system call to make: its name (for messages), number and arguments.
type Call = (&'static str, i64, [u64; 5]);

/// As [`syscalls_in`], after writing `strings` (NUL-terminated) to the thread's stack well below its stack
/// pointer; `calls` gets their addresses.
#[cfg(target_arch = "x86_64")]
fn syscalls_with_strings_in(
    pid: i32,
    strings: &[&str],
    calls: impl FnOnce(&[u64]) -> Vec<Call>,
) -> Vec<(&'static str, i64)> {
    use nix::sys::ptrace;
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let thread = nix::unistd::Pid::from_raw(pid);
    wait_until_in_a_syscall(pid);
    ptrace::seize(thread, ptrace::Options::empty()).unwrap();
    ptrace::interrupt(thread).unwrap();
    let stopped = waitpid(thread, Some(WaitPidFlag::__WALL)).unwrap();
    assert!(
        matches!(
            stopped,
            WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..)
        ),
        "{stopped:?}"
    );
    let saved = ptrace::getregs(thread).unwrap();
    // The stopped call's `syscall` instruction (0f 05) is just before the thread's instruction pointer.
    let instruction = saved.rip - 2;
    let word = ptrace::read(thread, instruction as ptrace::AddressType).unwrap();
    assert_eq!(
        word & 0xffff,
        0x050f,
        "the thread is not stopped in a syscall"
    );
    let stack = stack_of(pid);
    let mut next = (saved.rsp - 8192) & !7;
    let mut addresses = Vec::new();
    for text in strings {
        assert!(
            stack.contains(&next),
            "scratch {next:#x} is outside the stack {stack:x?}"
        );
        addresses.push(next);
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(bytes.len() / 8 * 8 + 8, 0);
        for (i, word) in bytes.chunks(8).enumerate() {
            let word = i64::from_ne_bytes(word.try_into().unwrap());
            let at = next + 8 * i as u64;
            ptrace::write(thread, at as ptrace::AddressType, word).unwrap();
        }
        next += bytes.len() as u64;
    }
    let results = calls(&addresses)
        .into_iter()
        .map(|(name, number, args)| {
            let mut regs = saved;
            regs.rip = instruction;
            regs.rax = number as u64;
            // No restart of the interrupted call around this one.
            regs.orig_rax = u64::MAX;
            (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8) =
                (args[0], args[1], args[2], args[3], args[4]);
            ptrace::setregs(thread, regs).unwrap();
            ptrace::step(thread, None).unwrap();
            let stepped = waitpid(thread, Some(WaitPidFlag::__WALL)).unwrap();
            assert!(matches!(stepped, WaitStatus::Stopped(..)), "{stepped:?}");
            (name, ptrace::getregs(thread).unwrap().rax as i64)
        })
        .collect();
    ptrace::setregs(thread, saved).unwrap();
    ptrace::detach(thread, None).unwrap();
    results
}

/// The address range of process `pid`'s main stack.
fn stack_of(pid: i32) -> std::ops::Range<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[stack]")).unwrap();
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    u64::from_str_radix(start, 16).unwrap()..u64::from_str_radix(end, 16).unwrap()
}

/// What `openat(AT_FDCWD, path, O_RDONLY)` of each path returns in process `pid`.
#[cfg(target_arch = "x86_64")]
fn opens_in(pid: i32, paths: &[&str]) -> Vec<i64> {
    syscalls_with_strings_in(pid, paths, |addresses| {
        let at_fdcwd = nix::libc::AT_FDCWD as i64 as u64;
        addresses
            .iter()
            .map(|&path| ("openat", nix::libc::SYS_openat, [at_fdcwd, path, 0, 0, 0]))
            .collect()
    })
    .into_iter()
    .map(|(_, result)| result)
    .collect()
}

/// Waits (a bounded while) until the thread is blocked in a system call rather than running.
#[cfg(target_arch = "x86_64")]
fn wait_until_in_a_syscall(pid: i32) {
    for _ in 0..100 {
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap();
        if syscall
            .split_whitespace()
            .next()
            .is_some_and(|nr| nr.parse::<i64>().is_ok_and(|nr| nr >= 0))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the shim server's main thread never waited in a system call");
}

#[test]
fn python_and_javascript_guests_serve_under_the_filter() {
    let containerd = Containerd::start();
    for (name, greeting) in [
        ("python-http", "hello from python"),
        ("python-http-p3", "hello from python"),
        ("js-http", "hello from javascript"),
    ] {
        let image = import_example(&containerd, name);
        let port = free_port();
        run_service(&containerd, &image, name, port, &[]);
        let addr = ([127, 0, 0, 1], port).into();
        assert!(wait_for_200(addr).contains(greeting), "{name}");
        let pid = shim_of(&containerd, name);
        assert_eq!(status_field(pid, "Seccomp"), "2", "{name}'s shim server");
        if name.starts_with("python") {
            // Guest output goes through the shim's output thread to containerd's fifo.
            assert_eq!(wasmhttp_tests::get(addr, "/log").status, 200, "{name}");
        }
        kill_now(&containerd, name);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_container_naming_a_host_path_outside_the_file_rules_is_refused_until_the_node_lists_it() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("guest.log");
    let log_uri = format!("file://{}", log.display());
    let output = ctr_run(
        &containerd,
        "-d",
        &["--net-host", "--log-uri", &log_uri, &image, "refused"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "ran with a log outside: {stderr}");
    assert!(
        stderr.contains(&log.display().to_string()) && stderr.contains("[security] host-paths"),
        "{stderr}"
    );
    assert!(!log.exists(), "nothing written before the refusal");
    containerd.assert_shims_exit();

    let netns = NetNs::create("wasmhttp-hostpaths", "10.213.83", "whhpa");
    let listed = node_config_listing(dir.path());
    let config = ["--runtime-config-path", listed.to_str().unwrap()];
    let (_, addr) = serve_in_namespace(
        &containerd,
        &netns,
        "listed",
        &[&config[..], &["--log-uri", &log_uri]].concat(),
    );
    assert_eq!(wasmhttp_tests::get(addr, "/").status, 200);
    assert!(log.exists(), "the listed log file is written");
    kill_now(&containerd, "listed");
    containerd.ctr_ok(&["task", "rm", "listed"]);
    containerd.assert_shims_exit();

    // `landlock = "off"`: no file rules, so no refusal and the host's files open.
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[security]\nlandlock = \"off\"\n").unwrap();
    let other_log = format!("file://{}", dir.path().join("other.log").display());
    let (pid, _) = serve_in_namespace(
        &containerd,
        &netns,
        "unruled",
        &[
            "--runtime-config-path",
            off.to_str().unwrap(),
            "--log-uri",
            &other_log,
        ],
    );
    assert!(opens_in(pid, &["/etc/passwd"])[0] >= 0);
    assert_eq!(status_field(pid, "Seccomp"), "2", "the filter stays on");
    kill_now(&containerd, "unruled");
}
