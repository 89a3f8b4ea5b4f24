//! The allowlist compiled to a seccomp program.
//!
//! seccompiler compiles each call to a chain of its own, five instructions even for a call allowed
//! whatever its arguments, and the kernel checks and JIT-compiles every instruction when the filter is
//! installed, which the shim does at each start. So seccompiler compiles only the calls narrowed by their
//! arguments; the calls allowed whatever their arguments become a binary search, in a block spliced in where
//! seccompiler's program ends with its verdict for a call it does not list. The narrowed calls come
//! first: the kernel remembers the verdict of a call that depends on its number alone, so the long block
//! is run when the filter is installed, while a narrowed call is run through the program at every call.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch, sock_filter};
use std::collections::BTreeMap;

/// Calls compared one by one at the end of a search; a comparison's jump to the verdict stays short.
const LEAF: usize = 8;

/// A program that answers `matched` for the calls in `rules` (any arguments for a call with no rules,
/// otherwise when one of its rules matches), `mismatch` for every other call, and before all that, the
/// answers in `first` (calls `rules` does not narrow).
pub fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    first: &[(i64, SeccompAction)],
) -> Result<BpfProgram, seccompiler::Error> {
    let (any_arguments, narrowed): (BTreeMap<_, _>, BTreeMap<_, _>) =
        rules.into_iter().partition(|(_, rules)| rules.is_empty());
    assert!(
        first.iter().all(|(call, _)| !narrowed.contains_key(call)),
        "a call answered first is not narrowed: its chain would answer before"
    );
    let mut program = seccompiler_program(narrowed, mismatch.clone(), matched.clone())?;
    let unlisted = program.pop();
    let expected = statement(libc::BPF_RET | libc::BPF_K, u32::from(mismatch));
    assert_eq!(
        unlisted.as_ref(),
        Some(&expected),
        "seccompiler's program ends with its verdict for a call it does not list"
    );
    // Reached with any call no chain listed.
    program.push(load_call_number());
    for (call, answer) in first {
        program.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            number(*call),
            0,
            1,
        ));
        program.push(statement(
            libc::BPF_RET | libc::BPF_K,
            answer.clone().into(),
        ));
    }
    let calls: Vec<u32> = any_arguments.keys().map(|&call| number(call)).collect();
    program.extend(any_of(&calls, u32::from(matched)));
    program.extend(unlisted);
    Ok(program)
}

fn number(call: i64) -> u32 {
    u32::try_from(call).expect("system call numbers are small")
}

/// seccompiler's own program for `rules` (every call a chain of its own).
pub fn seccompiler_program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    Ok(SeccompFilter::new(rules, mismatch, matched, arch)?.try_into()?)
}

/// With the call's number loaded, returns `verdict` when it is one of `calls` (sorted); otherwise goes on
/// after the block. A binary search: the kernel runs the program for every call number when the filter is
/// installed (to remember the verdicts that depend on the number alone), so the steps per number count.
fn any_of(calls: &[u32], verdict: u32) -> BpfProgram {
    let mut block = Vec::new();
    let mut exits = Vec::new();
    search(calls, verdict, &mut block, &mut exits);
    for exit in exits {
        block[exit].k = jump_over(&block, exit);
    }
    block
}

/// Appends a search of `calls`: `verdict` for one of them, else a jump whose place is pushed on `exits`,
/// to be aimed past the block.
fn search(calls: &[u32], verdict: u32, block: &mut BpfProgram, exits: &mut Vec<usize>) {
    if calls.len() <= LEAF {
        for (i, &call) in calls.iter().enumerate() {
            // Past the rest of the comparisons and the exit, onto the verdict.
            let past = (calls.len() - i) as u8;
            block.push(jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                call,
                past,
                0,
            ));
        }
        exits.push(block.len());
        block.push(statement(libc::BPF_JMP | libc::BPF_JA, 0));
        block.push(statement(libc::BPF_RET | libc::BPF_K, verdict));
        return;
    }
    let (lower, upper) = calls.split_at(calls.len() / 2);
    // A comparison jumps 255 instructions at most; the unconditional jump it falls to reaches any length.
    block.push(jump(
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        upper[0],
        0,
        1,
    ));
    let to_upper = block.len();
    block.push(statement(libc::BPF_JMP | libc::BPF_JA, 0));
    search(lower, verdict, block, exits);
    block[to_upper].k = jump_over(block, to_upper);
    search(upper, verdict, block, exits);
}

/// How far the unconditional jump at `at` goes to land just past the end of `block`.
fn jump_over(block: &BpfProgram, at: usize) -> u32 {
    (block.len() - at - 1) as u32
}

fn load_call_number() -> sock_filter {
    let nr = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr)
}

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A comparison that jumps `jt` instructions forward when true and `jf` when false.
fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
