//! Waiting for what a service does outside containerd's view: a free port, lines in a log, a 200.

use crate::get;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The text of the log file at `path` once it holds every one of `lines`, or what it holds after 10 s. Guest
/// output reaches containerd's log through a writer thread of its own, so a response can come before its
/// log lines are written.
pub fn log_holding(path: &Path, lines: &[&str]) -> String {
    text_holding(lines, Duration::from_millis(50), || {
        std::fs::read_to_string(path).unwrap_or_default()
    })
}

/// What `read` returns once it holds every one of `lines`, read again every `every`, or what it returns
/// after 10 s.
pub fn text_holding(lines: &[&str], every: Duration, mut read: impl FnMut() -> String) -> String {
    let started = Instant::now();
    loop {
        let text = read();
        if lines.iter().all(|line| text.contains(line))
            || started.elapsed() > Duration::from_secs(10)
        {
            return text;
        }
        std::thread::sleep(every);
    }
}

/// Polls `addr` until `/` answers 200; returns the body.
pub fn wait_for_200(addr: SocketAddr) -> String {
    wait_for_200_at(addr, "/")
}

/// Polls `addr` until `target` answers 200; returns the body. Connects with a timeout, since a pod IP
/// that is not up yet drops packets rather than refusing them.
pub fn wait_for_200_at(addr: SocketAddr, target: &str) -> String {
    try_wait_for_200_at(addr, target).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`wait_for_200_at`], but says what it last got instead of panicking, so that a caller can add what
/// it knows (containerd's log, say).
pub fn try_wait_for_200_at(addr: SocketAddr, target: &str) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let last = match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => {
                let reply = get(addr, target);
                if reply.status == 200 {
                    return Ok(reply.body);
                }
                format!("{} {:?}", reply.status, reply.body)
            }
            Err(e) => format!("connect: {e}"),
        };
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{addr}{target} never answered 200 (last: {last})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
