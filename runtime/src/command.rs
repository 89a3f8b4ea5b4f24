//! Running a WASI command (a `wasi:cli/run` component or a preview 1 module) to completion.

use crate::capabilities::Capabilities;
use crate::classify::WasiVersion;
use crate::cpu::CpuMeter;
use crate::engine::{Code, Loaded, Runtime};
use crate::instance::{
    Guarded, InstanceGuard, InstanceIo, InstanceState, P1State, finish, new_store,
};
use crate::knobs::Limits;
use crate::metered::run_metered;
use crate::output::GuestOutput;
use crate::stats::{FailureCause, StatsSnapshot};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Store;
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::cli::StdinStream;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p3::bindings as p3;

/// Exit code of a command that trapped (including memory and fuel limits): 128 + SIGABRT, as a native
/// process that aborts.
pub const EXIT_TRAP: i32 = 134;
/// Exit code of a command stopped by its timeout, as with `timeout(1)`.
pub const EXIT_TIMEOUT: i32 = 124;

/// The standard streams of a command run.
#[derive(Default)]
pub struct CommandIo {
    /// Standard input; `None` is empty.
    pub stdin: Option<Box<dyn StdinStream + Sync>>,
    /// Standard output.
    pub stdout: GuestOutput,
    /// Standard error; the runtime's own message about a trap goes here too.
    pub stderr: GuestOutput,
}

impl CommandIo {
    /// A command's stdin read from `reader` (a fifo, a pipe): the guest reads what it yields, and reaches
    /// the end of its input when `reader` ends.
    pub fn stdin_from(
        reader: impl tokio::io::AsyncRead + Send + Sync + 'static,
    ) -> Box<dyn StdinStream + Sync> {
        Box::new(wasmtime_wasi::cli::AsyncStdinStream::new(reader))
    }
}

/// How a command ended.
#[derive(Debug, Clone)]
pub struct CommandExit {
    /// The exit code: the guest's own, or [`EXIT_TRAP`] / [`EXIT_TIMEOUT`].
    pub code: i32,
    /// Set when the runtime stopped the guest, with the detail.
    pub failure: Option<(FailureCause, String)>,
    /// CPU, fuel and memory figures of the run.
    pub stats: StatsSnapshot,
}

impl CommandExit {
    /// Whether the runtime stopped the command because it reached its memory limit.
    pub fn ran_out_of_memory(&self) -> bool {
        matches!(self.failure, Some((FailureCause::Memory, _)))
    }
}

/// What a command run's CPU and memory count against: an account of its own, or one it shares with a running
/// service or command, as processes share a cgroup. A command exec'd into a container shares the container's,
/// so it takes from the container's CPU quota and memory limit rather than adding to them.
#[derive(Clone)]
pub struct Charge {
    meter: Arc<CpuMeter>,
    /// Whether another run or service owns the account: a shared run owes its own compile CPU when it
    /// starts, and its failures are not the owner's to count.
    shared: bool,
}

impl Charge {
    /// An account of its own for running `app` under `limits`, owing the CPU its compile took.
    pub fn new(runtime: &Runtime, limits: &Limits, app: &Loaded) -> Self {
        Charge {
            meter: runtime.meter_for(limits, app),
            shared: false,
        }
    }

    /// The same account, for a run beside its owner.
    pub fn shared(&self) -> Self {
        Charge {
            meter: self.meter.clone(),
            shared: true,
        }
    }

    pub(crate) fn of_service(meter: Arc<CpuMeter>) -> Self {
        Charge {
            meter,
            shared: true,
        }
    }
}

/// Runs `app` to completion under `limits` with `caps`, on an account of its own, returning its exit status.
pub async fn run_command(
    runtime: &Runtime,
    app: &Loaded,
    limits: &Limits,
    caps: &Capabilities,
    io: CommandIo,
) -> Result<CommandExit, crate::Error> {
    let charge = Charge::new(runtime, limits, app);
    run_command_charged(runtime, app, limits, caps, io, charge).await
}

/// [`run_command`], charged to `charge`. The exit's stats are the account's.
pub async fn run_command_charged(
    runtime: &Runtime,
    app: &Loaded,
    limits: &Limits,
    caps: &Capabilities,
    io: CommandIo,
    charge: Charge,
) -> Result<CommandExit, crate::Error> {
    let link_error = |e: wasmtime::Error| crate::Error::Link {
        name: app.name().to_string(),
        detail: format!("{e:#}"),
    };
    if app.kind().is_http() {
        return Err(crate::Error::Link {
            name: app.name().to_string(),
            detail: "it is a wasi:http service, not a command; serve it instead".into(),
        });
    }
    caps.validate()?;
    app.check_memory_minimum(limits)?;
    let meter = charge.meter;
    if charge.shared {
        meter.charge(app.load_cpu(), Instant::now());
    }
    let mut guard = InstanceGuard::new(
        app.name().into(),
        meter.clone(),
        limits,
        runtime.config().max_table_elements,
    );
    guard.start_request(limits);
    let instance_io = InstanceIo {
        caps,
        stdout: &io.stdout,
        stderr: &io.stderr,
        stdin: io.stdin,
        line_buffered: false,
    };
    let setup_error = |e: wasmtime::Error| {
        crate::Error::Capability(format!("cannot set up {}: {e:#}", app.name()))
    };
    let outcome = match app.code() {
        Code::Component(component) => {
            let pre = runtime
                .component_linker(component)
                .and_then(|linker| linker.instantiate_pre(component))
                .map_err(link_error)?;
            let mut store = new_store(
                component.engine(),
                InstanceState::new(instance_io, guard).map_err(setup_error)?,
            );
            let result = if app.wasi() == WasiVersion::P3 {
                let pre = p3::CommandPre::new(pre).map_err(link_error)?;
                let run = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    store
                        .run_concurrent(async |store| command.wasi_cli_run().call_run(store).await)
                        .await?
                };
                run_metered(&meter, limits.request_timeout, caps.guest_file_user(), run).await
            } else {
                let pre = CommandPre::new(pre).map_err(link_error)?;
                let run = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                };
                run_metered(&meter, limits.request_timeout, caps.guest_file_user(), run).await
            };
            conclude(
                store,
                result.map(|status| if status.is_ok() { 0 } else { 1 }),
            )
        }
        Code::Module(module) => {
            let pre = runtime
                .module_linker()
                .and_then(|linker| linker.instantiate_pre(module))
                .map_err(link_error)?;
            let mut store = new_store(
                runtime.engine(),
                P1State::new(instance_io, guard).map_err(setup_error)?,
            );
            let run = async {
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            };
            let result =
                run_metered(&meter, limits.request_timeout, caps.guest_file_user(), run).await;
            conclude(store, result.map(|()| 0))
        }
    };
    let (code, failure) = match outcome {
        Ok(code) => (code, None),
        Err((cause, detail)) => {
            if !charge.shared {
                meter.stats().failed(cause);
            }
            // After the store is gone, so the guest's own last lines come first.
            io.stderr.write_line(&format!(
                "wasmhttp: {} stopped: {}: {detail}",
                app.name(),
                cause.reason()
            ));
            let code = if cause == FailureCause::Timeout {
                EXIT_TIMEOUT
            } else {
                EXIT_TRAP
            };
            (code, Some((cause, detail)))
        }
    };
    // What the command printed reaches its reader before its exit is reported.
    io.stdout.drain_at_end().await;
    io.stderr.drain_at_end().await;
    Ok(CommandExit {
        code,
        failure,
        stats: meter.stats().snapshot(),
    })
}

/// Turns a run's result into an exit code or a failure, then drops the store (flushing guest output).
fn conclude<T: Guarded>(
    mut store: Store<T>,
    result: wasmtime::Result<i32>,
) -> Result<i32, (FailureCause, String)> {
    // `exit(n)` unwinds as an error but is a normal end for a command.
    let result = match result {
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(e),
        },
        ok => ok,
    };
    let failure = finish(&mut store, &result);
    drop(store);
    match (result, failure) {
        (Ok(code), None) => Ok(code),
        (_, Some(failure)) => Err(failure),
        (Err(e), None) => Err((FailureCause::Trap, format!("{e:#}"))),
    }
}
