//! Bounded load against a service and what it costs the shim: requests kept in flight for a time, bursts,
//! and CPU and memory sampled from `/proc` while the load runs.

use crate::containerd::process_cpu;
use crate::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Keeps `clients` requests to `target` in flight until `duration` has passed; returns every status.
pub fn load(addr: SocketAddr, target: &str, clients: usize, duration: Duration) -> Vec<u16> {
    let target: Arc<str> = target.into();
    each_client_until(clients, duration, move || get(addr, &target).status)
}

/// Keeps `clients` connections busy sending `head` (a raw request head) on a fresh connection each time
/// until `duration` has passed; returns the status of every answer (0 for none within 20 s).
pub fn flood(
    addr: SocketAddr,
    head: &'static [u8],
    clients: usize,
    duration: Duration,
) -> Vec<u16> {
    use std::io::{Read, Write};
    each_client_until(clients, duration, move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut status = [0u8; 12];
        let answered = stream.write_all(head).is_ok() && stream.read_exact(&mut status).is_ok();
        let code = std::str::from_utf8(&status[9..12])
            .ok()
            .and_then(|c| c.parse().ok());
        if answered { code.unwrap_or(0) } else { 0 }
    })
}

/// Runs `request` over and over on `clients` threads until `duration` has passed; returns every status.
fn each_client_until(
    clients: usize,
    duration: Duration,
    request: impl Fn() -> u16 + Clone + Send + 'static,
) -> Vec<u16> {
    let deadline = Instant::now() + duration;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                // Bounded by time, and by count in case the server answers instantly.
                while Instant::now() < deadline && statuses.len() < 100_000 {
                    statuses.push(request());
                }
                statuses
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Sends `count` requests at once and returns their statuses.
pub fn burst(addr: SocketAddr, target: &str, count: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let target = target.to_string();
            std::thread::spawn(move || get(addr, &target).status)
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Runs `work` while sampling `sample` every 20 ms; returns the work's output and the largest sample.
pub fn sampling<T>(
    sample: impl Fn() -> u64 + Send + 'static,
    work: impl FnOnce() -> T,
) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = std::thread::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(sample(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let output = work();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (output, peak.load(Ordering::Relaxed))
}

/// What the process `shim` used of the CPU while some work ran, in CPU-seconds per second.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// What its threads ran.
    pub rate: f64,
    /// What they waited, runnable, for a CPU the kernel gave to others (their `run_delay`), plus the
    /// machine's steal time: CPU the shim may have wanted and the machine did not give it. A quota that
    /// holds shows as its rate on a quiet machine; on a busy one the rate may fall short by this much.
    pub denied: f64,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} CPU (denied {:.3})", self.rate, self.denied)
    }
}

impl CpuUse {
    /// Asserts the shim held to `limit` CPU within ±10%: never above it, and below only by what the
    /// machine denied it, so a quota enforced too tightly still fails on a quiet machine.
    pub fn assert_near(&self, limit: f64, what: &str) {
        assert!(
            self.rate <= limit * 1.1 && self.rate + self.denied >= limit * 0.9,
            "{what}: limit {limit} CPU, used {self}"
        );
    }
}

/// What the process `shim` used of the CPU while `work` ran.
pub fn shim_cpu_rate<T>(shim: i32, work: impl FnOnce() -> T) -> (T, CpuUse) {
    let (cpu, delay, stolen, started) =
        (process_cpu(shim), run_delay(shim), steal(), Instant::now());
    let output = work();
    let seconds = started.elapsed().as_secs_f64();
    let used = process_cpu(shim).saturating_sub(cpu);
    let denied = run_delay(shim).saturating_sub(delay) + steal().saturating_sub(stolen);
    let usage = CpuUse {
        rate: used.as_secs_f64() / seconds,
        denied: denied.as_secs_f64() / seconds,
    };
    (output, usage)
}

/// Time the threads of `pid` alive now have spent runnable and waiting for a CPU (`/proc/…/schedstat`).
fn run_delay(pid: i32) -> Duration {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let nanos = threads
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Time the hypervisor has taken the machine's CPUs from it since boot (`/proc/stat`, all CPUs).
fn steal() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8)?.parse::<u64>().ok())
        .unwrap_or(0);
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis(ticks * 10)
}
