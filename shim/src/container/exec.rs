//! Processes exec'd into a running container (`ctr task exec`, `kubectl exec`, exec probes): a WASI command
//! found in the container's rootfs as the container's own `args[0]` was, run with the container's volumes,
//! network, limits and the exec's own user and environment. containerd sees an exec'd process as it would
//! under runc: added, started, exited with its code, then deleted.

use super::{Active, Container, EXIT_OOM, Exit, ExitCell, State as ContainerState, Status};
use crate::error::{Result, ShimError};
use crate::events::{Event, Events};
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::unix::pipe;
use tokio::task::AbortHandle;
use wasmhttp_runtime::{
    Capabilities, Charge, CommandIo, GuestOutput, Limits, Loaded, Runtime, Source,
};

/// How many execs a container holds at once (created, running, or ended and not yet deleted): each holds a
/// compiled command and, while it runs, an instance under the container's limits.
pub const MAX_EXECS: usize = 16;

/// What a container's execs start from, kept from its Create.
#[derive(Clone)]
pub struct ExecBase {
    /// The shared engine.
    pub runtime: Runtime,
    /// The container's capabilities: its volumes and network; args, env and user are each exec's own.
    pub caps: Capabilities,
    /// The directories of its rootfs, topmost first.
    pub rootfs: Vec<PathBuf>,
    /// The largest wasm file an exec may name (the node's `max-component-size`).
    pub max_bytes: u64,
    /// Where the container's task events go; an exec's go there too.
    pub events: Events,
}

/// An Exec request, as containerd sends it.
pub struct ExecRequest {
    /// The process's OCI spec (`Process`, JSON).
    pub spec: Vec<u8>,
    /// Whether it asks for a terminal.
    pub terminal: bool,
    /// Its stdio fifos (empty: none).
    pub stdin: String,
    /// See `stdin`.
    pub stdout: String,
    /// See `stdin`.
    pub stderr: String,
}

/// A command ready to run: a command container's, or an exec's.
pub(super) struct Command {
    pub(super) runtime: Runtime,
    pub(super) app: Loaded,
    pub(super) caps: Capabilities,
    pub(super) stdin: Option<pipe::Receiver>,
    pub(super) stdout: GuestOutput,
    pub(super) stderr: GuestOutput,
}

enum State {
    Created(Box<Command>),
    Running(AbortHandle),
    Stopped,
}

/// One exec'd process.
pub struct Exec {
    container_id: String,
    id: String,
    state: Mutex<State>,
    exit: ExitCell,
    stdio: [String; 3],
    events: Events,
}

impl ExecBase {
    /// Reads and compiles the command `request` names and opens its stdio: blocking (the rootfs, the compiler,
    /// the fifos), so call it off the executor, with the async runtime entered.
    pub fn prepare(&self, container_id: &str, exec_id: &str, request: ExecRequest) -> Result<Exec> {
        let invalid = |what: String| {
            ShimError::InvalidArgument(format!(
                "exec {exec_id} in container {container_id}: {what}"
            ))
        };
        if request.terminal {
            return Err(invalid(
                "wasmhttp does not support terminals (exec -t): a WASI command has no tty".into(),
            ));
        }
        crate::stdio::check_reachable(&request.stdin, &request.stdout, &request.stderr)
            .map_err(|e| invalid(e.to_string()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&request.spec)
            .map_err(|e| invalid(format!("the process spec is not OCI process JSON: {e}")))?;
        let args = process.args().clone().unwrap_or_default();
        let Some(entry) = args.first().filter(|a| !a.is_empty()) else {
            return Err(invalid(
                "process.args is empty: name the command to run".into(),
            ));
        };
        if let Some(i) = args.iter().position(|a| a.contains('\0')) {
            return Err(invalid(format!("process.args[{i}] holds a NUL byte")));
        }
        let env = process.env().clone().unwrap_or_default();
        let found = crate::bundle::find_command(&self.rootfs, entry, &env, self.max_bytes)
            .map_err(|e| invalid(format!("process.args[0] {e}")))?;
        let Some((path, bytes)) = found else {
            return Err(invalid(crate::bundle::not_in_rootfs(entry)));
        };
        let source = Source::from_bytes(format!("{container_id} exec {exec_id} ({path})"), bytes);
        let app = self
            .runtime
            .load(&source)
            .map_err(|e| invalid(e.to_string()))?;
        if app.kind().is_http() {
            return Err(invalid(format!(
                "{path} is a wasi:http service, not a command: exec runs commands"
            )));
        }
        let mut guest_args = args.clone();
        guest_args[0] = crate::bundle::guest_name(entry);
        let caps = Capabilities {
            args: guest_args,
            env: crate::bundle::guest_env(&env).map_err(invalid)?,
            cwd: crate::bundle::guest_cwd(process.cwd()).map_err(invalid)?,
            file_user: crate::bundle::file_user(process.user()),
            ..self.caps.clone()
        };
        let output = |path: &str| {
            crate::stdio::open_output(path).map_err(|e| invalid(format!("cannot open {path}: {e}")))
        };
        let stdin = (!request.stdin.is_empty())
            .then(|| {
                crate::stdio::open_input(request.stdin.as_ref())
                    .map_err(|e| invalid(format!("cannot open stdin {}: {e}", request.stdin)))
            })
            .transpose()?;
        let prepared = Command {
            runtime: self.runtime.clone(),
            app,
            caps,
            stdin,
            stdout: output(&request.stdout)?,
            stderr: output(&request.stderr)?,
        };
        Ok(Exec {
            container_id: container_id.to_string(),
            id: exec_id.to_string(),
            state: Mutex::new(State::Created(Box::new(prepared))),
            exit: ExitCell::default(),
            stdio: [request.stdin, request.stdout, request.stderr],
            events: self.events.clone(),
        })
    }
}

impl Exec {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current status.
    pub fn status(&self) -> Status {
        match &*self.lock() {
            State::Created(_) => Status::Created,
            State::Running(_) => Status::Running,
            State::Stopped => Status::Stopped,
        }
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.get()
    }

    /// Its stdin, stdout and stderr as containerd named them.
    pub fn stdio(&self) -> &[String; 3] {
        &self.stdio
    }

    /// Runs it under `limits` (the container's, without a request timeout: an exec lasts until it ends or
    /// is killed), charged to `charge` (the container's account).
    fn start(self: &Arc<Self>, mut limits: Limits, charge: Charge) -> Result<()> {
        let mut state = self.lock();
        let State::Created(_) = &*state else {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} was already started",
                self.id
            )));
        };
        let State::Created(prepared) = std::mem::replace(&mut *state, State::Stopped) else {
            unreachable!()
        };
        limits.request_timeout = None;
        tracing::info!(container = %self.container_id, exec = %self.id, "exec started");
        let this = self.clone();
        let task = tokio::spawn(async move {
            // An exec over its memory limit exits 137 as an OOM-killed process would, but publishes no
            // TaskOOM: that event is the container's, and CRI would report the container OOMKilled.
            let (code, _) = run_to_exit(*prepared, limits, charge, &this.container_id).await;
            this.finish(code);
        });
        *state = State::Running(task.abort_handle());
        Ok(())
    }

    /// Stops it as a process without signal handlers stops: at once, with 128 + the signal.
    fn kill(&self, signal: u32) -> Result<()> {
        let effect = crate::signal::effect(signal).map_err(ShimError::InvalidArgument)?;
        let state = self.lock();
        match &*state {
            State::Stopped => Err(ShimError::NotFound(format!(
                "exec {} is not running",
                self.id
            ))),
            _ if effect == crate::signal::Effect::Nothing => Ok(()),
            State::Running(task) => {
                task.abort();
                drop(state);
                self.finish(128 + signal);
                Ok(())
            }
            State::Created(_) => {
                drop(state);
                self.finish(128 + signal);
                Ok(())
            }
        }
    }

    /// Records the exit once and publishes it; later calls are ignored.
    fn finish(&self, code: u32) {
        let Some(exit) = self.exit.record(code) else {
            return;
        };
        *self.lock() = State::Stopped;
        tracing::info!(container = %self.container_id, exec = %self.id, code, "exec exited");
        self.events.send(Event::Exit(TaskExit {
            container_id: self.container_id.clone(),
            id: self.id.clone(),
            pid: std::process::id(),
            exit_status: code,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        }));
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        self.exit.wait().await
    }

    /// CloseIO of stdin (see [`Container::close_stdin`]).
    pub fn close_stdin(&self) {
        if !self.stdio[0].is_empty() {
            crate::stdio::end_input(self.stdio[0].as_ref());
        }
    }
}

/// Runs a command to its exit status: the guest's own code, [`EXIT_OOM`] when it reached its memory limit
/// (the second value then says so), or the runtime's code for a trap or a command that could not start.
pub(super) async fn run_to_exit(
    command: Command,
    limits: Limits,
    charge: Charge,
    container_id: &str,
) -> (u32, bool) {
    let Command {
        runtime,
        app,
        caps,
        stdin,
        stdout,
        stderr,
    } = command;
    let io = CommandIo {
        stdin: stdin.map(CommandIo::stdin_from),
        stdout,
        stderr,
    };
    match wasmhttp_runtime::run_command_charged(&runtime, &app, &limits, &caps, io, charge).await {
        Ok(exit) if exit.ran_out_of_memory() => (EXIT_OOM, true),
        Ok(exit) => (exit.code as u32, false),
        Err(e) => {
            tracing::error!(container = %container_id, "command failed to start: {e}");
            (wasmhttp_runtime::EXIT_TRAP as u32, false)
        }
    }
}

/// A container's execs, by id.
pub(super) type Execs = Mutex<HashMap<String, Arc<Exec>>>;

impl Container {
    /// What its execs start from; an error for a pod sandbox, which has no rootfs.
    pub fn exec_base(&self) -> Result<ExecBase> {
        self.exec_base.clone().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "container {} is a pod sandbox, which runs nothing to exec into",
                self.id
            ))
        })
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exec>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the container can take exec `exec_id`: asked before an exec is prepared, so that a refused
    /// one costs no compile, and again as it is added.
    pub fn check_exec_room(&self, exec_id: &str) -> Result<()> {
        self.exec_room(&self.execs(), exec_id)
    }

    fn exec_room(&self, execs: &HashMap<String, Arc<Exec>>, exec_id: &str) -> Result<()> {
        if self.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id} already exists in container {}",
                self.id
            )));
        }
        if execs.len() >= MAX_EXECS {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} holds {MAX_EXECS} execs already, the most it may: delete ended ones first",
                self.id
            )));
        }
        Ok(())
    }

    /// Registers a prepared exec (containerd's Exec); it runs at Start.
    pub fn add_exec(&self, exec: Exec) -> Result<()> {
        let mut execs = self.execs();
        self.exec_room(&execs, &exec.id)?;
        self.events.send(Event::ExecAdded(TaskExecAdded {
            container_id: self.id.clone(),
            exec_id: exec.id.clone(),
            ..Default::default()
        }));
        execs.insert(exec.id.clone(), Arc::new(exec));
        Ok(())
    }

    /// The exec `exec_id` of this container.
    pub fn exec(&self, exec_id: &str) -> Result<Arc<Exec>> {
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| self.no_such_exec(exec_id))
    }

    fn no_such_exec(&self, exec_id: &str) -> ShimError {
        ShimError::NotFound(format!("exec {exec_id} not found in container {}", self.id))
    }

    /// Starts an exec under the container's limits in force, charged to the container's account as a
    /// process in its cgroup would be.
    pub fn start_exec(&self, exec_id: &str) -> Result<()> {
        let exec = self.exec(exec_id)?;
        let charge = match &*self.lock() {
            ContainerState::Running(Active::Service(handle)) => handle.charge(),
            ContainerState::Running(Active::Command(_, charge)) => charge.shared(),
            _ => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is not running",
                    self.id
                )));
            }
        };
        // Published first, so containerd sees the start before the exit of a command that ends at once.
        self.events.send(Event::ExecStarted(TaskExecStarted {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
            pid: std::process::id(),
            ..Default::default()
        }));
        exec.start(self.limits(), charge)
    }

    /// Delivers a signal to an exec.
    pub fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        self.exec(exec_id)?.kill(signal)
    }

    /// Removes an exec that is not running, returning it.
    pub fn delete_exec(&self, exec_id: &str) -> Result<Arc<Exec>> {
        let mut execs = self.execs();
        let exec = execs
            .get(exec_id)
            .ok_or_else(|| self.no_such_exec(exec_id))?;
        if exec.status() == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {exec_id} is running; kill it first"
            )));
        }
        Ok(execs.remove(exec_id).expect("found above"))
    }

    /// Ends every exec still running or not yet started, as SIGKILL would: an exec does not outlive its
    /// container.
    pub(super) fn kill_execs(&self) {
        let execs: Vec<_> = self.execs().values().cloned().collect();
        for exec in execs {
            let _ = exec.kill(nix::sys::signal::Signal::SIGKILL as u32);
        }
    }
}
