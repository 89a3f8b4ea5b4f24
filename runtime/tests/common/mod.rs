//! Helpers shared by the runtime's integration tests: example binaries, a served instance, and a raw
//! HTTP/1.1 client over real loopback sockets.
// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code, unused_imports)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wasmhttp_runtime::*;
pub use wasmhttp_test_client::{Reply, get, request};

/// Held for the whole of each test of a binary that must not run beside another of its tests (one that
/// measures the whole process, or needs a core to itself). Each test binary has its own copy of this module,
/// so tests only take turns within their binary.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The built example guest `name` (built by `examples/build.sh`, which the test script runs first).
pub fn example(name: &str) -> Source {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run examples/build.sh first",
        path.display()
    );
    Source::from_file(&path).unwrap()
}

/// Runs `work` while a thread samples this process's RSS every millisecond; returns the peak growth over
/// the start.
pub async fn peak_growth<F: std::future::Future>(work: F) -> (F::Output, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let rss = || own_status_bytes("VmRSS");
    let baseline = rss();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = std::thread::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    let output = work.await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (
        output,
        peak.load(Ordering::Relaxed).saturating_sub(baseline),
    )
}

/// A size field of this process's `/proc/self/status` (`VmRSS`, `RssAnon`, …), in bytes. Tests that read it
/// run alone in their test binary, so the figure is theirs.
pub fn own_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib << 10
}

pub fn runtime() -> Runtime {
    Runtime::new(EngineConfig {
        max_instances: 64,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Collects guest output for assertions.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// The text once it holds `needle`, or whatever it holds after 10 s: guest output is written by a
    /// thread of its own (and a fresh instance's unfinished line when the instance drops), so it can
    /// trail the response that caused it.
    pub fn holding(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.text();
            if text.contains(needle) || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    pub fn output(&self) -> GuestOutput {
        GuestOutput::new(self.clone())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Served {
    pub handle: ServiceHandle,
    pub addr: SocketAddr,
    pub stdout: Capture,
    pub stderr: Capture,
}

/// Serves example `name` on a free loopback port.
pub fn serve(runtime: &Runtime, name: &str, limits: Limits, caps: Capabilities) -> Served {
    let app = runtime.load(&example(name)).unwrap();
    let (stdout, stderr) = (Capture::default(), Capture::default());
    let service = Service::new(
        runtime,
        &app,
        limits,
        caps,
        stdout.output(),
        stderr.output(),
    )
    .unwrap();
    let handle = service
        .serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let addr = handle.local_addr();
    Served {
        handle,
        addr,
        stdout,
        stderr,
    }
}

/// Serves `app` on a free loopback port with HTTP `options`, its output discarded.
pub fn serve_with_options(
    runtime: &Runtime,
    app: &Loaded,
    limits: Limits,
    options: HttpOptions,
) -> ServiceHandle {
    Service::new(
        runtime,
        app,
        limits,
        Capabilities::default(),
        GuestOutput::discard(),
        GuestOutput::discard(),
    )
    .unwrap()
    .with_http_options(options)
    .serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    .unwrap()
}

/// Serves the `mem-hog` example under a memory limit of `memory` bytes, and no other limit.
pub fn serve_mem_hog(runtime: &Runtime, memory: Option<u64>) -> Served {
    let limits = Limits {
        memory,
        ..Limits::default()
    };
    serve(runtime, "mem-hog", limits, Capabilities::default())
}

/// Same as [`get`], from async code.
pub async fn get_async(addr: SocketAddr, target: &str) -> Reply {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || get(addr, &target))
        .await
        .unwrap()
}
