//! The compact program is checked against seccompiler's own, call by call, on a small classic BPF
//! interpreter that does what the kernel does with the instructions the two programs use.

use super::*;
use crate::confine::syscalls::{self, IOCTL_REQUESTS, PRCTL_OPTIONS, SOCKET_FAMILIES};
use libc::{BPF_ABS, BPF_ALU, BPF_AND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_K};
use libc::{BPF_LD, BPF_RET, BPF_W};
use std::collections::BTreeSet;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const LOG: u32 = libc::SECCOMP_RET_LOG;

/// The verdict of `program` on a call with number `nr` and `args`, made from architecture `arch`.
fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    run_counting(program, arch, nr, args).0
}

/// [`run`], and how many instructions it took.
fn run_counting(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = Vec::with_capacity(64);
    data.extend(nr.to_ne_bytes());
    data.extend(arch.to_ne_bytes());
    data.extend(0u64.to_ne_bytes()); // instruction pointer
    args.iter().for_each(|arg| data.extend(arg.to_ne_bytes()));
    let (mut a, mut pc) = (0u32, 0usize);
    for steps in 1.. {
        let insn = &program[pc];
        pc += 1;
        let k = insn.k;
        let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match u32::from(insn.code) {
            code if code == BPF_LD | BPF_W | BPF_ABS => {
                let at = k as usize;
                a = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
            }
            code if code == BPF_ALU | BPF_AND | BPF_K => a &= k,
            code if code == BPF_JMP | BPF_JA => pc += k as usize,
            code if code == BPF_JMP | BPF_JEQ | BPF_K => pc += branch(a == k),
            code if code == BPF_JMP | BPF_JGT | BPF_K => pc += branch(a > k),
            code if code == BPF_JMP | BPF_JGE | BPF_K => pc += branch(a >= k),
            code if code == BPF_RET | BPF_K => return (k, steps),
            code => panic!("instruction {code:#x} is not interpreted here"),
        }
    }
    unreachable!()
}

fn native_arch() -> u32 {
    // The value the arch check compares with, read back from seccompiler's first comparison.
    seccompiler_program(
        BTreeMap::from([(0, Vec::new())]),
        SeccompAction::Errno(1),
        SeccompAction::Allow,
    )
    .unwrap()[1]
        .k
}

/// Argument values the narrowed calls' rules compare with, and their neighbours.
fn interesting_values() -> Vec<u64> {
    let mut values = vec![0, 1, u64::MAX, u64::from(std::process::id())];
    values.extend(
        [
            libc::CLONE_THREAD,
            libc::CLONE_THREAD | libc::CLONE_VM,
            libc::CLONE_NEWNET,
        ]
        .map(|f| f as u64),
    );
    values.extend(PRCTL_OPTIONS.iter().map(|&o| o as u64));
    values.extend(IOCTL_REQUESTS.iter().copied());
    values.extend(SOCKET_FAMILIES.iter().map(|&f| f as u64));
    values.extend([libc::AF_UNIX, libc::AF_NETLINK, libc::AF_PACKET].map(|f| f as u64));
    let neighbours: Vec<u64> = values
        .iter()
        .flat_map(|&v| {
            [
                v.wrapping_add(1),
                v | 1 << 32,
                v & !(libc::CLONE_THREAD as u64),
            ]
        })
        .collect();
    values.extend(neighbours);
    values
}

/// The verdict of `filters` (in the order installed) as the kernel takes it: each filter's, the most
/// restrictive winning, the newest filter's on a tie.
fn kernel_verdict(filters: &[BpfProgram], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let action = |verdict: u32| (verdict & libc::SECCOMP_RET_ACTION_FULL) as i32;
    filters
        .iter()
        .rev()
        .map(|filter| run(filter, arch, nr, args))
        .reduce(|verdict, older| {
            if action(older) < action(verdict) {
                older
            } else {
                verdict
            }
        })
        .unwrap()
}

/// The calls checked: every number up to 1023 and a few beyond (x32's), the narrowed ones with each
/// interesting value in each argument they compare.
fn calls() -> Vec<(u32, [u64; 6])> {
    let narrowed: Vec<u32> = syscalls::allowlist()
        .into_iter()
        .filter(|(_, rules)| !rules.is_empty())
        .map(|(call, _)| call as u32)
        .collect();
    let values = interesting_values();
    let mut calls = Vec::new();
    for nr in (0..1024u32).chain([0x4000_0000, 0x4000_0000 | 1, u32::MAX]) {
        calls.extend([(nr, [0; 6]), (nr, [u64::MAX; 6])]);
        if narrowed.contains(&nr) {
            for &value in &values {
                calls.extend((0..3).map(|arg| {
                    let mut args = [0; 6];
                    args[arg] = value;
                    (nr, args)
                }));
            }
        }
    }
    calls
}

#[test]
fn the_compact_program_answers_every_call_as_the_filters_seccompiler_compiles() {
    let arch = native_arch();
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let modes = [
        (
            SeccompAction::Errno(libc::EPERM as u32),
            vec![(libc::SYS_clone3, SeccompAction::Errno(libc::ENOSYS as u32))],
            [ALLOW, EPERM, enosys],
        ),
        (SeccompAction::Log, Vec::new(), [ALLOW, LOG, LOG]),
    ];
    for (mismatch, first, expected) in modes {
        // What the shim installed before: a filter of its own for each call answered first, then the list.
        let mut filters: Vec<BpfProgram> = first
            .iter()
            .map(|(call, answer)| {
                let rules = BTreeMap::from([(*call, Vec::new())]);
                seccompiler_program(rules, SeccompAction::Allow, answer.clone()).unwrap()
            })
            .collect();
        let whole = seccompiler_program(
            syscalls::allowlist(),
            mismatch.clone(),
            SeccompAction::Allow,
        );
        filters.push(whole.unwrap());
        let compact = program(
            syscalls::allowlist(),
            mismatch,
            SeccompAction::Allow,
            &first,
        )
        .unwrap();
        let mut verdicts = BTreeSet::new();
        for (nr, args) in calls() {
            let verdict = run(&compact, arch, nr, args);
            let before = kernel_verdict(&filters, arch, nr, args);
            assert_eq!(verdict, before, "call {nr} with {args:x?}");
            verdicts.insert(verdict);
        }
        assert_eq!(verdicts, expected.into(), "every verdict was reached");
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        let read = libc::SYS_read as u32;
        assert_eq!(
            run(&compact, !arch, read, [0; 6]),
            kill,
            "another architecture"
        );
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(
            run(&compact, arch, ioctl, [0, libc::FIONBIO, 0, 0, 0, 0]),
            ALLOW
        );
        // The kernel runs every call number through the program when it is installed.
        // The kernel runs every call number through the program when it is installed.
        let steps = |program: &[sock_filter]| -> usize {
            (0..512)
                .map(|nr| run_counting(program, arch, nr, [0; 6]).1)
                .sum()
        };
        let (ours, seccompilers) = (steps(&compact), steps(filters.last().unwrap()));
        assert!(
            ours * 4 < seccompilers,
            "{ours} steps against seccompiler's {seccompilers}"
        );
    }
}

#[test]
fn a_long_list_is_searched_right_and_in_few_steps() {
    let calls: Vec<u32> = (0..600).map(|call| call * 2).collect();
    let mut block = vec![load_call_number()];
    block.extend(any_of(&calls, ALLOW));
    block.push(statement(BPF_RET | BPF_K, EPERM));
    for nr in 0..1300 {
        let expected = if nr % 2 == 0 && nr < 1200 {
            ALLOW
        } else {
            EPERM
        };
        let (verdict, steps) = run_counting(&block, 0, nr, [0; 6]);
        assert_eq!(verdict, expected, "call {nr}");
        // The load, 2 per level (7 halvings bring 600 calls to leaves of 8 or fewer), a leaf, its verdict.
        assert!(
            steps <= 1 + 2 * 7 + LEAF + 1,
            "call {nr} took {steps} instructions"
        );
    }
}
