//! Helpers shared by the runtime's integration tests: example binaries, a served instance, and a raw
//! HTTP/1.1 client over real loopback sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmhttp_runtime::*;

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

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends one request (with `Connection: close`) and reads the whole reply. Blocking: call from
/// `spawn_blocking` inside async tests.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra_headers: &str,
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server must answer, not drop the connection");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: decode_chunked(head, body),
    }
}

pub fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target, "", b"")
}

/// Same as [`get`], from async code.
pub async fn get_async(addr: SocketAddr, target: &str) -> Reply {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || get(addr, &target))
        .await
        .unwrap()
}

fn decode_chunked(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size..].trim_start_matches("\r\n");
    }
    out
}
