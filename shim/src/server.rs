//! The long-lived shim server: the ttrpc Task and Sandbox services on the socket containerd chose.
//!
//! containerd-shim's own bootstrap serves only `containerd.task.v3.Task` (containerd 2.x); containerd 1.6
//! and 1.7 call `containerd.task.v2.Task`, which is the same API under its older name. This serves both,
//! and `containerd.runtime.sandbox.v1.Sandbox` for containerd 2.x's `sandboxer = "shim"`.

use crate::broker::Spawned;
use crate::sandbox::SandboxService;
use crate::task::TaskService;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::asynchronous::Server;
use containerd_shim::{Error, Flags};
use containerd_shim_protos::sandbox_async::create_sandbox;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

const V3: &str = "containerd.task.v3.Task";
const V2: &str = "containerd.task.v2.Task";

/// Wraps an I/O error with what the shim was doing, in containerd-shim's error type.
pub fn io_error(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |err| Error::IoError {
        context: context.to_string(),
        err,
    }
}

/// How long the last replies get to be written once the shim has decided to exit.
const REPLY_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves until Shutdown leaves no container.
pub async fn serve(flags: Flags) -> Result<(), Error> {
    let path = flags.socket.trim_start_matches("unix://").to_string();
    if path.is_empty() {
        return Err(Error::InvalidArgument("shim socket cannot be empty".into()));
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)?;
    log_panics();
    // containerd may already have connected: its requests wait in the backlog while the broker, the
    // confinement and the Task service are set up. This process's stderr goes nowhere, so a failure from here
    // on is logged for containerd's log, and containerd sees the socket close.
    let listener = match crate::start::inherited_listener() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("shim server failed: {e}");
            return Err(e);
        }
    };
    let served = match spawn_broker_and_confine(&flags, Path::new(&path)) {
        Ok(broker) => serve_task_api(listener, &flags, &path, broker).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &served {
        tracing::error!("shim server failed: {e}");
        let _ = std::fs::remove_file(&path);
    }
    served
}

/// Spawns the broker ([`crate::broker`]), then confines the server: the broker must be started while the
/// server may still execute a binary.
fn spawn_broker_and_confine(flags: &Flags, socket: &Path) -> Result<Spawned, Error> {
    if std::env::var_os("TTRPC_ADDRESS").is_none() {
        return Err(Error::InvalidArgument(
            "TTRPC_ADDRESS is not set (containerd sets it for the shims it starts)".into(),
        ));
    }
    let broker = crate::broker::spawn(flags).map_err(io_error("spawning the shim broker"))?;
    confine_server(socket)?;
    Ok(broker)
}

/// Restricts file access, drops capabilities and installs the seccomp filter in the modes `start` passed
/// down; the server refuses to run unconfined rather than run so silently.
fn confine_server(socket: &Path) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let env = |name: &str| std::env::var(name).ok();
    let mode = match env(crate::confine::SECCOMP_MODE_ENV) {
        Some(text) => text.parse().map_err(|e| {
            Error::InvalidArgument(format!("{}: {e}", crate::confine::SECCOMP_MODE_ENV))
        })?,
        None => wasmhttp_runtime::confine::SeccompMode::default(),
    };
    // Run by hand, without `start`: the node's defaults.
    let node_rules = match env(crate::confine::FILE_RULES_ENV) {
        Some(text) => crate::confine::decode(&text).map_err(Error::InvalidArgument)?,
        None => crate::confine::node_file_rules(&crate::node_config::NodeConfig::default(), None)
            .map_err(|e| Error::Other(e.to_string()))?,
    };
    let files = match node_rules {
        Some(rules) => {
            let bundle = std::env::current_dir().map_err(io_error("bundle directory"))?;
            Some(crate::confine::server_file_rules(rules, &bundle, socket))
        }
        None => None,
    };
    crate::confine::confine(mode, files, started).map_err(Error::Other)
}

/// Sends panics to containerd's log: this process's stderr goes nowhere, and a panic in a task is otherwise
/// only a dropped reply.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        log::error!("shim panicked: {info}\n{backtrace}");
    }));
}

async fn serve_task_api(
    listener: UnixListener,
    flags: &Flags,
    path: &str,
    broker: Spawned,
) -> Result<(), Error> {
    let Spawned {
        content,
        events,
        mut child,
    } = broker;
    // Reaped (and an early end logged) on a detached thread: the server cannot start it again, and without it
    // containerd gets no events. Not a blocking task of the runtime, whose shutdown would wait for it: the
    // broker exits only after the server's ends of the pairs close.
    let reaper = std::thread::Builder::new()
        .name("broker-reaper".into())
        .stack_size(64 << 10)
        .spawn(move || match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::error!("the shim broker ended: {status}"),
            Err(e) => tracing::error!("cannot wait for the shim broker: {e}"),
        });
    reaper.map_err(io_error("starting the broker's reaper thread"))?;
    let exit = Arc::new(ExitSignal::default());
    let pair = || io_error("the shim broker's socket pair");
    events.set_nonblocking(true).map_err(pair())?;
    let events = tokio::net::UnixStream::from_std(events).map_err(pair())?;
    let content = crate::broker::Content::new(content).map_err(pair())?;
    let tasks = Arc::new(TaskService::new(
        crate::events::Events::new(events),
        exit.clone(),
        content,
    ));
    let sandboxes = Arc::new(SandboxService::new(tasks.clone()));
    let task: Arc<dyn containerd_shim::Task + Send + Sync> = tasks;
    let mut services = create_task(task.clone());
    let mut older = create_task(task);
    if let Some(service) = older.remove(V3) {
        services.insert(V2.to_string(), service);
    }
    services.extend(create_sandbox(sandboxes));
    let listener = Listener::try_from(listener).map_err(io_error("creating the ttrpc listener"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await?;
    tokio::spawn(ignore_termination_signals());
    tracing::info!("shim serving on {}", flags.socket);
    exit.wait().await;
    tracing::info!("shim shutting down");
    // The request that ended the shim (Shutdown, ShutdownSandbox) signalled the exit before returning its
    // reply, and ttrpc's shutdown closes connections without waiting for replies still being written:
    // containerd 2.x reports "failed to shutdown sandbox: ttrpc: closed" for a ShutdownSandbox cut that way.
    // The socket goes first, so a new container's `start` meanwhile binds a new server rather than
    // connecting to this one, which accepts no more.
    let _ = std::fs::remove_file(path);
    server.stop_listen().await;
    tokio::time::sleep(REPLY_GRACE).await;
    server.shutdown().await.unwrap_or_default();
    Ok(())
}

/// containerd ends a shim through Shutdown, not signals; a stray SIGTERM/SIGINT must not kill running services.
async fn ignore_termination_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("ignoring SIGTERM: containerd stops the shim with Shutdown"),
            _ = int.recv() => tracing::info!("ignoring SIGINT"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    #[test]
    fn a_panic_reaches_the_log() {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Error);
        super::log_panics();
        let panicked = std::thread::spawn(|| panic!("boom in a handler")).join();
        let _ = std::panic::take_hook();
        assert!(panicked.is_err());
        let logged = LOGGED.lock().unwrap().join("\n");
        assert!(
            logged.contains("shim panicked: panicked at") && logged.contains("boom in a handler"),
            "{logged}"
        );
    }
}
