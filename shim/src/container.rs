//! One container's life: created → running (↔ paused) → stopped, whatever it runs.

use crate::bundle::{Network, Payload, Workload};
use crate::error::{Result, ShimError};
use crate::events::{Event, Events};
use crate::signal::Effect;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;
use wasmhttp_runtime::telemetry::RequestTracer;
use wasmhttp_runtime::{
    Charge, GuestOutput, Layers, Limits, Runtime, Service, ServiceHandle, StatsSnapshot,
};

mod exec;
mod exit;
mod limits;
use exec::{Command, Execs};
pub use exec::{ExecBase, ExecRequest};
pub use exit::{EXIT_OOM, EXIT_START_FAILED, Exit, ExitCell, timestamp};

/// The task status containerd sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Not admitting requests.
    Paused,
    /// Ended.
    Stopped,
}

enum Prepared {
    Sandbox,
    Service {
        service: Service,
        /// The limits it was built with; an Update before Start changes the container's.
        limits: Limits,
        port: u16,
        network: Network,
    },
    Command(Command),
}

enum Active {
    Sandbox,
    Service(Arc<ServiceHandle>),
    /// A command's task, and the account its execs share.
    Command(AbortHandle, Charge),
}

enum State {
    Created(Box<Prepared>),
    Running(Active),
    Paused(Active),
    Stopped,
}

/// What Create hands over besides the workload.
pub struct CreateOptions {
    /// The shared engine.
    pub runtime: Runtime,
    /// The fifo a command reads its stdin from (none: its stdin is empty); a service has no stdin.
    pub stdin: Option<PathBuf>,
    /// Guest stdout.
    pub stdout: GuestOutput,
    /// Guest stderr.
    pub stderr: GuestOutput,
    /// Where task events go.
    pub events: Events,
    /// The request tracer and the attributes of this container's spans, when traces are exported.
    pub tracing: Option<(RequestTracer, Vec<(String, String)>)>,
}

/// One container of this shim.
pub struct Container {
    id: String,
    state: Mutex<State>,
    /// The configuration layers and the limits folded from them; Update re-folds.
    limits: Mutex<(Layers, Limits)>,
    code_size: u64,
    killed_by: AtomicU32,
    exit: ExitCell,
    events: Events,
    network: Network,
    /// A command's stdin fifo, for CloseIO.
    stdin: Option<PathBuf>,
    /// A service's counters as it stopped: exports keep reading them (a counter that dropped to zero would
    /// look like a restart to Prometheus).
    final_stats: Mutex<Option<StatsSnapshot>>,
    /// What execs start from (none for a pod sandbox).
    exec_base: Option<ExecBase>,
    execs: Execs,
}

impl Container {
    /// Loads (compiles or fetches from the cache) and links the workload; nothing runs yet.
    pub fn create(
        id: &str,
        workload: Workload,
        options: CreateOptions,
        max_bytes: u64,
    ) -> Result<Self> {
        let CreateOptions {
            runtime,
            stdin,
            stdout,
            stderr,
            events,
            tracing: traced,
        } = options;
        let limits = workload.limits.clone();
        let network = workload.network.clone();
        let exec_base = (!matches!(workload.payload, Payload::Sandbox)).then(|| ExecBase {
            runtime: runtime.clone(),
            caps: workload.capabilities.clone(),
            rootfs: workload.rootfs.clone(),
            max_bytes,
            events: events.clone(),
        });
        let (prepared, code_size) = match workload.payload {
            Payload::Sandbox => (Prepared::Sandbox, 0),
            Payload::ImageLayer(layer) => {
                return Err(ShimError::Internal(format!(
                    "{}: the image's wasm layer was not read before Create",
                    layer.name
                )));
            }
            Payload::Wasm(source) => {
                // The name is what the runtime's log lines (refusals, traps) say: make them name the container.
                let name = format!("{id} ({})", source.name());
                let source = source.with_name(name);
                let app = runtime
                    .load(&source)
                    .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
                let code_size = app.code_size();
                let prepared = if app.kind().is_http() {
                    let service = Service::new(
                        &runtime,
                        &app,
                        limits.clone(),
                        workload.capabilities,
                        stdout,
                        stderr,
                    )
                    .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
                    let service = match traced {
                        Some((tracer, attributes)) => service.with_tracing(tracer, attributes),
                        None => service,
                    };
                    Prepared::Service {
                        service,
                        limits: limits.clone(),
                        port: workload.port.map_err(ShimError::InvalidArgument)?,
                        network: workload.network,
                    }
                } else {
                    let fifo = stdin.as_deref().map(|path| {
                        crate::stdio::open_input(path).map_err(|e| {
                            ShimError::InvalidArgument(format!(
                                "cannot open stdin {}: {e}",
                                path.display()
                            ))
                        })
                    });
                    Prepared::Command(Command {
                        runtime,
                        app,
                        caps: workload.capabilities,
                        stdin: fifo.transpose()?,
                        stdout,
                        stderr,
                    })
                };
                (prepared, code_size)
            }
        };
        let stdin = stdin.filter(|_| matches!(prepared, Prepared::Command(_)));
        Ok(Container {
            id: id.to_string(),
            stdin,
            state: Mutex::new(State::Created(Box::new(prepared))),
            limits: Mutex::new((workload.layers, limits)),
            code_size,
            killed_by: AtomicU32::new(0),
            exit: ExitCell::default(),
            events,
            network,
            final_stats: Mutex::default(),
            exec_base,
            execs: Execs::default(),
        })
    }

    /// The pod sandbox of containerd's Sandbox API: nothing to run, the pod's network namespace for its
    /// containers to join, and a life to wait on. It publishes no task events (it is no task of containerd's).
    pub fn pod_sandbox(id: &str, network: Network) -> Self {
        Container {
            id: id.to_string(),
            state: Mutex::new(State::Created(Box::new(Prepared::Sandbox))),
            limits: Mutex::default(),
            code_size: 0,
            killed_by: AtomicU32::new(0),
            exit: ExitCell::default(),
            events: Events::none(),
            network,
            stdin: None,
            final_stats: Mutex::default(),
            exec_base: None,
            execs: Execs::default(),
        }
    }

    /// The network namespace its listener lives in (for a pod sandbox: the pod's).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// How long SIGTERM lets in-flight requests finish (the `drain-timeout` knob).
    pub fn drain_timeout(&self) -> Duration {
        // Folded limits always carry it (a built-in default).
        self.limits().drain_timeout.unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current status.
    pub fn status(&self) -> Status {
        match &*self.lock() {
            State::Created(_) => Status::Created,
            State::Running(_) => Status::Running,
            State::Paused(_) => Status::Paused,
            State::Stopped => Status::Stopped,
        }
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.get()
    }

    /// Starts serving or running. A service's listener is bound before this returns, so a port in use fails
    /// Start itself.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let mut state = self.lock();
        let State::Created(_) = &*state else {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} was already started",
                self.id
            )));
        };
        let State::Created(prepared) = std::mem::replace(&mut *state, State::Stopped) else {
            unreachable!()
        };
        match self.activate(*prepared) {
            Ok(active) => {
                *state = State::Running(active);
                Ok(())
            }
            Err(e) => {
                // The task never ran, yet containerd must see it exit, or Wait hangs and Delete reports 0.
                drop(state);
                tracing::error!(container = %self.id, "start failed: {e}");
                self.finish(EXIT_START_FAILED);
                Err(e)
            }
        }
    }

    fn activate(self: &Arc<Self>, prepared: Prepared) -> Result<Active> {
        Ok(match prepared {
            Prepared::Sandbox => Active::Sandbox,
            Prepared::Service {
                service,
                limits,
                port,
                network,
            } => {
                let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                let listener =
                    crate::netns::listen(addr, &network).map_err(ShimError::FailedPrecondition)?;
                let handle = Arc::new(
                    service
                        .serve(listener)
                        .map_err(|e| ShimError::Internal(format!("cannot serve: {e}")))?,
                );
                let current = self.limits();
                if current != limits {
                    handle.update_limits(current);
                }
                let (this, watched) = (self.clone(), handle.clone());
                tokio::spawn(async move {
                    watched.finished().await;
                    this.finish(128 + this.killed_by.load(Ordering::SeqCst));
                });
                Active::Service(handle)
            }
            Prepared::Command(command) => {
                let limits = self.limits();
                let charge = Charge::new(&command.runtime, &limits, &command.app);
                let (this, shared) = (self.clone(), charge.shared());
                let task = tokio::spawn(async move {
                    let (code, out_of_memory) =
                        exec::run_to_exit(command, limits, charge, &this.id).await;
                    if out_of_memory {
                        // Kubernetes' contract for a process over its memory limit: a TaskOOM event (CRI's
                        // reason "OOMKilled") and 137, as if the kernel had killed it.
                        this.events.send(Event::Oom(TaskOOM {
                            container_id: this.id.clone(),
                            ..Default::default()
                        }));
                    }
                    this.finish(code);
                });
                Active::Command(task.abort_handle(), shared)
            }
        })
    }

    /// Records the exit once and publishes it; later calls are ignored.
    fn finish(&self, code: u32) {
        let Some(exit) = self.exit.record(code) else {
            return;
        };
        let (last, ..) = self.usage();
        // Kept before the state changes, so a scrape in between never reads zeros.
        *self.final_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(last.clone());
        *self.lock() = State::Stopped;
        self.kill_execs();
        // The same figures the task metrics, CRI stats and /metrics report, for whoever reads only logs.
        tracing::info!(
            container = %self.id,
            code,
            requests = last.requests_total(),
            served = last.requests_served,
            trap = last.failed_trap,
            fuel = last.failed_fuel,
            deadline = last.failed_timeout,
            memory = last.failed_memory,
            over_capacity = last.failed_overload,
            cancelled = last.failed_cancelled,
            cpu_us = last.cpu_time.as_micros() as u64,
            memory_refusals = last.memory_refusals,
            "exited"
        );
        self.events.send(Event::Exit(TaskExit {
            container_id: self.id.clone(),
            id: self.id.clone(),
            pid: std::process::id(),
            exit_status: code,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        }));
    }

    /// Delivers a signal as [`crate::signal`] says a process without handlers would take it: SIGKILL stops
    /// at once, another stopping signal drains for up to `grace` first, an ignored one does nothing, and a
    /// stopped container answers NOT_FOUND either way.
    pub fn kill(&self, signal: u32, grace: Duration) -> Result<()> {
        let effect = crate::signal::effect(signal).map_err(ShimError::InvalidArgument)?;
        let state = self.lock();
        if effect == Effect::Nothing && !matches!(*state, State::Stopped) {
            return Ok(());
        }
        let active = match &*state {
            State::Running(active) | State::Paused(active) => active,
            State::Created(_) => {
                drop(state);
                self.finish(128 + signal);
                return Ok(());
            }
            State::Stopped => {
                return Err(ShimError::NotFound(format!(
                    "container {} is not running",
                    self.id
                )));
            }
        };
        let sigkill = signal == nix::sys::signal::Signal::SIGKILL as u32;
        if sigkill {
            // SIGKILL overrides a drain under way: the exit says 137, as promised.
            self.killed_by.store(signal, Ordering::SeqCst);
        } else {
            let _ = self
                .killed_by
                .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        }
        match active {
            Active::Service(handle) => {
                let handle = handle.clone();
                let grace = if sigkill { Duration::ZERO } else { grace };
                tokio::spawn(async move { handle.shutdown(grace).await });
            }
            Active::Command(task, _) => {
                task.abort();
                drop(state);
                self.finish(128 + signal);
            }
            Active::Sandbox => {
                drop(state);
                self.finish(128 + signal);
            }
        }
        Ok(())
    }

    /// CloseIO of stdin: a command whose client never opened its stdin fifo reaches the end of its input.
    pub fn close_stdin(&self) {
        if let Some(fifo) = &self.stdin {
            crate::stdio::end_input(fifo);
        }
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        self.exit.wait().await
    }

    /// Stops or restarts admitting requests.
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        let mut state = self.lock();
        let active = match (&*state, paused) {
            (State::Running(active), true) | (State::Paused(active), false) => active,
            _ => {
                let expected = if paused { "running" } else { "paused" };
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is not {expected}",
                    self.id
                )));
            }
        };
        match active {
            Active::Command(..) => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} runs a command, which cannot be paused",
                    self.id
                )));
            }
            Active::Service(handle) => handle.set_paused(paused),
            Active::Sandbox => {}
        }
        let (State::Running(active) | State::Paused(active)) =
            std::mem::replace(&mut *state, State::Stopped)
        else {
            unreachable!("matched above")
        };
        *state = if paused {
            State::Paused(active)
        } else {
            State::Running(active)
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests;
