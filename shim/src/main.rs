//! `containerd-shim-wasmhttp-v1`: the containerd shim v2 for runtime type `io.containerd.wasmhttp.v1`.
//!
//! containerd starts this binary with `start` for a new container; it spawns (or, for another container of
//! the same pod, reuses) a long-lived shim process that serves the Task API over ttrpc and runs every
//! container's wasm through the wasmhttp runtime. Logs go to containerd's log pipe; stdout stays clean.

mod annotations;
mod bootstrap;
mod broker;
mod bundle;
mod confine;
mod container;
mod containerd_api;
mod content;
mod engine;
mod error;
mod events;
mod limits;
mod metrics;
mod netns;
mod node_config;
mod rootfs;
mod sandbox;
mod scrape;
mod server;
mod signal;
mod start;
mod stdio;
mod task;
mod traces;

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::types::introspection::RuntimeInfo;
use containerd_shim::util::timestamp;
use containerd_shim::{DeleteResponse, Error, Flags};
use std::io::Write;

/// Host memory the shim allocates for a service is charged to it (see `wasmhttp_runtime::ChargingAllocator`).
#[cfg(feature = "host-memory-charging")]
#[global_allocator]
static ALLOCATOR: wasmhttp_runtime::ChargingAllocator = wasmhttp_runtime::ChargingAllocator;

/// The runtime type containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.wasmhttp.v1";

/// What the `delete` action does, in the bundle directory. containerd 1.6 runs it whenever a shim's connection
/// closes, after a normal exit too, and for a shim that died (say, SIGKILL): the task ended as if killed, and a
/// dead server's socket must not be left behind.
///
/// What it finds and leaves goes to stderr, which containerd logs ("cleanup warnings"): a socket left behind
/// must say why.
fn clean_up_after_shim() -> Result<DeleteResponse, Error> {
    match std::fs::read_to_string("address") {
        Ok(address) => {
            let path = address.trim().trim_start_matches("unix://").to_string();
            let holder = match listener_of(&path) {
                Listener::Live(holder) => {
                    eprintln!("{RUNTIME_ID}: kept the shim socket {path}: {holder}");
                    return exited_by_kill();
                }
                Listener::Exiting(pid) => Some(pid),
                Listener::None => None,
            };
            match (std::fs::remove_file(&path), holder) {
                // Said because it is the case a plain connect test gets wrong: the killed shim still holds
                // its listener while the kernel tears it down.
                (Ok(()), Some(pid)) => eprintln!(
                    "{RUNTIME_ID}: removed the shim socket {path}, still held by its exiting process {pid}"
                ),
                (Ok(()), None) => {}
                (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {}
                (Err(e), _) => eprintln!("{RUNTIME_ID}: cannot remove the shim socket {path}: {e}"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("{RUNTIME_ID}: cannot read the bundle's address file: {e}"),
    }
    exited_by_kill()
}

/// The exit containerd reports for the dead shim's task: killed (128 + SIGKILL).
fn exited_by_kill() -> Result<DeleteResponse, Error> {
    Ok(DeleteResponse {
        exit_status: 137,
        exited_at: Some(timestamp()?).into(),
        ..Default::default()
    })
}

/// Who listens on a shim socket.
#[derive(Debug, PartialEq)]
enum Listener {
    /// Nothing: connections are refused, or the path is gone.
    None,
    /// The process with this pid, which is exiting or a zombie: it serves nothing.
    Exiting(i32),
    /// A live server; the text says which.
    Live(String),
}

/// Who still accepts on `path`. containerd runs `delete` once its connection to a killed shim closes, and the
/// kernel may close that connection before the shim's listener, which queues connections until it is closed
/// too (`bench/killed-shim.sh` counts how often); so a connect that succeeds is not enough: the listener's
/// process (its `SO_PEERCRED` pid) must also be alive and not exiting.
fn listener_of(path: &str) -> Listener {
    if path.is_empty() {
        return Listener::Live("no socket path".into());
    }
    for _ in 0..20 {
        let Ok(stream) = std::os::unix::net::UnixStream::connect(path) else {
            return Listener::None;
        };
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(peer) if !process_alive(peer.pid()) => return Listener::Exiting(peer.pid()),
            Ok(peer) => {
                return Listener::Live(format!("live process {} accepts on it", peer.pid()));
            }
            // No credentials: judge by whether it keeps accepting, as a live server does.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Listener::Live("it kept accepting connections without naming its process".into())
}

/// Whether `pid` exists and is not exiting (`PF_EXITING` in `/proc/PID/stat`'s flags) or a zombie.
fn process_alive(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let (state, flags) = (
        fields.first(),
        fields.get(6).and_then(|f| f.parse::<u64>().ok()),
    );
    !matches!(state, Some(&"Z") | Some(&"X") | None) && flags.is_some_and(|f| f & PF_EXITING == 0)
}

/// The `delete` action, answered without the library's bootstrap (signal handlers, subreaper, and blocking
/// threads for file and stdout I/O): containerd waits for it before a container can be removed, so it is on
/// the path of every `ctr run --rm`, and it starts no child to reap.
fn delete_action() -> Result<(), Error> {
    let response = clean_up_after_shim()?;
    write_stdout(&response.write_to_bytes()?, "the delete response")
}

/// `-info`: what containerd 2.x asks a runtime about itself (`ctr info --runtime`, the CRI's introspection).
fn info_action() -> Result<(), Error> {
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        ..Default::default()
    };
    write_stdout(&info.write_to_bytes()?, "the runtime info")
}

pub(crate) fn write_stdout(bytes: &[u8], what: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(server::io_error(&format!("write {what}")))
}

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "{}:\n  Runtime: {RUNTIME_ID}\n  Version: {}",
            env!("CARGO_BIN_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    // The short-lived actions answer without an async runtime: containerd waits for each of them.
    let result = match flags.action.as_str() {
        _ if flags.info => info_action(),
        "start" => start::run(flags),
        "delete" => delete_action(),
        _ => serve_in_runtime(flags),
    };
    if let Err(e) = result {
        eprintln!("{RUNTIME_ID}: {e}");
        std::process::exit(1);
    }
}

// One thread for the Task API, stdio and commands: HTTP connections run on the runtime's own workers, and a
// multi-threaded runtime here only cost every shim process (three per container) its start-up and threads.
fn serve_in_runtime(flags: Flags) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Commands' guests run here, and a blocking thread started during their poll would keep their user.
        .on_thread_start(wasmhttp_runtime::reset_thread_file_rights)
        .build()
        .map_err(server::io_error("starting the async runtime"))?;
    runtime.block_on(async move {
        if flags.action == broker::ACTION {
            broker::serve::run(flags).await
        } else {
            server::serve(flags).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_served_only_by_a_live_process() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX), "no such process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let started = std::time::Instant::now();
        while process_alive(pid) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "`true` never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Exited but not yet reaped: a zombie serves nothing.
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(
            matches!(listener_of(path.to_str().unwrap()), Listener::Live(_)),
            "this live process listens"
        );
        drop(listener);
        assert_eq!(listener_of(path.to_str().unwrap()), Listener::None);
    }
}
