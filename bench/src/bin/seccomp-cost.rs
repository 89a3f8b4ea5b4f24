//! What the shim's seccomp filter adds to a system call: confines itself in MODE with
//! [`wasmhttp_runtime::confine`] (the shim's own mechanism and allowlist), then times the calls a served
//! request makes (`sendto`, `recvfrom`, `madvise`, and the `PAGEMAP_SCAN` `ioctl` wasmtime's pooling
//! allocator resets memory with), and `getppid`, the cheapest call, beside which the filter's own cost stands
//! out. The kernel does the same work for each call in every mode; run it in turns
//! with `enforce` and `off` and the difference is the filter.
//!
//! Usage: seccomp-cost MODE [ROUNDS]   (MODE enforce|log|off; default 100000 calls of each kind, 5
//! samples; prints each call's median nanoseconds)

use std::net::UdpSocket;
use std::time::Instant;
use wasmhttp_runtime::confine::{CapabilitySet, SeccompMode, confine};
use wasmhttp_runtime::pagemap::{PAGE, PRESENT, Query, Region, anonymous_pages, scan};

const SAMPLES: usize = 5;
const PAGES: usize = 16;

struct Calls {
    sender: UdpSocket,
    receiver: UdpSocket,
    memory: *mut u8,
    pagemap: std::fs::File,
    regions: Vec<Region>,
}

impl Calls {
    fn new() -> std::io::Result<Self> {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.connect(receiver.local_addr()?)?;
        receiver.set_nonblocking(true)?;
        // A mapping of its own, used only by this struct.
        let memory = anonymous_pages(PAGES)?;
        Ok(Calls {
            sender,
            receiver,
            memory,
            pagemap: std::fs::File::open("/proc/self/pagemap")?,
            regions: vec![Region::default(); PAGES],
        })
    }

    /// One call of kind `call` (an index into [`CALLS`]). The page dropped is never touched again, so no
    /// call pays for a page fault.
    fn make(&mut self, call: usize) {
        match call {
            0 => {
                // SAFETY: no arguments, no effects.
                unsafe { libc::getppid() };
            }
            1 => {
                let _ = self.sender.send(b"GET / HTTP/1.1\r\n\r\n");
            }
            2 => {
                let mut buffer = [0u8; 64];
                let _ = self.receiver.recv(&mut buffer);
            }
            // SAFETY: `memory` is this struct's own mapping of PAGES pages.
            3 => unsafe {
                libc::madvise(self.memory.cast(), PAGE, libc::MADV_DONTNEED);
            },
            _ => {
                let query = Query {
                    anyof: PRESENT,
                    returned: PRESENT,
                    ..Query::default()
                };
                let _ = scan(
                    &self.pagemap,
                    self.memory,
                    PAGE * PAGES,
                    query,
                    &mut self.regions,
                );
            }
        }
    }

    /// The median nanoseconds of one call of kind `call` over SAMPLES runs of `rounds` calls.
    fn nanoseconds_per_call(&mut self, call: usize, rounds: u32) -> f64 {
        let mut samples: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..rounds {
                    self.make(call);
                }
                started.elapsed().as_nanos() as f64 / f64::from(rounds)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[SAMPLES / 2]
    }
}

/// The calls timed, in the order they are printed.
const CALLS: [&str; 5] = [
    "getppid",
    "sendto",
    "recvfrom",
    "madvise",
    "ioctl(PAGEMAP_SCAN)",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let mode: SeccompMode = args
        .next()
        .expect("usage: seccomp-cost MODE [ROUNDS]")
        .parse()
        .expect("MODE");
    let rounds: u32 = args
        .next()
        .map(|n| n.parse().expect("ROUNDS is a number"))
        .unwrap_or(100_000);
    let mut calls = Calls::new().expect("set up the calls");
    confine(mode, CapabilitySet::all(), None).expect("confine");
    for (call, name) in CALLS.iter().enumerate() {
        calls.make(call);
        println!("{name} {:.1}", calls.nanoseconds_per_call(call, rounds));
    }
}
