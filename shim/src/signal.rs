//! What a signal sent to a task (`ctr task kill`, the kubelet's stop signal, which an image may choose) does
//! to a wasm container. There is no process to deliver it to, so the guest is taken as a process that
//! installed no handler: a signal whose default action ends a process stops the container (SIGKILL at
//! once, any other after a drain), one whose default is to be ignored does nothing, and signal 0 only
//! asks whether the task is there, as `kill(pid, 0)` does under runc.

use nix::sys::signal::Signal;

/// The highest signal number Linux has (`SIGRTMAX`).
const MAX_SIGNAL: u32 = 64;

/// What a signal does to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The container stops: its exit status is 128 + the signal.
    Stop,
    /// Nothing happens to a running container.
    Nothing,
}

/// The effect of `signal`, or why it is refused: a number that is no Linux signal, or one whose default
/// action would freeze a process, which has no counterpart here.
pub fn effect(signal: u32) -> Result<Effect, String> {
    if signal == 0 {
        return Ok(Effect::Nothing);
    }
    if signal > MAX_SIGNAL {
        return Err(format!(
            "signal {signal} is not a signal: Linux numbers them 1 to {MAX_SIGNAL}"
        ));
    }
    match Signal::try_from(signal as i32) {
        Ok(Signal::SIGCHLD | Signal::SIGCONT | Signal::SIGURG | Signal::SIGWINCH) => {
            Ok(Effect::Nothing)
        }
        Ok(stop @ (Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU)) => {
            Err(format!(
                "{stop} would stop a process, and a wasm container cannot be stopped that way: \
                 `ctr task pause` makes a service answer 503 until it is resumed"
            ))
        }
        _ => Ok(Effect::Stop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_act_as_on_a_process_without_handlers() {
        for stops in [1, 2, 9, 10, 15, 31, 34, 64] {
            assert_eq!(effect(stops), Ok(Effect::Stop), "signal {stops}");
        }
        for ignored in [0, 17, 18, 23, 28] {
            assert_eq!(effect(ignored), Ok(Effect::Nothing), "signal {ignored}");
        }
        let err = effect(19).unwrap_err();
        assert!(err.starts_with("SIGSTOP would stop a process"), "{err}");
        for bad in [65, 128, u32::MAX] {
            let err = effect(bad).unwrap_err();
            assert!(err.contains("Linux numbers them 1 to 64"), "{err}");
        }
    }
}
