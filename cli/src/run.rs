//! `wasmhttp run`: flags → `Limits` + `Capabilities` → serve or run.

use anyhow::Context;
use clap::Args;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wasmhttp_runtime::{
    Capabilities, CommandIo, EngineConfig, GuestOutput, Limits, Preopen, Runtime, Service, Source,
    parse_cpus, parse_duration, parse_memory,
};

#[derive(Args)]
pub struct RunArgs {
    /// The wasm binary: a wasi:http component, a wasi:cli command, or a WASI preview 1 module.
    app: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Memory for all live instances together (e.g. 64Mi); also the per-instance cap.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// Memory for one instance, when lower than --memory (e.g. 16Mi).
    #[arg(long, value_parser = parse_memory)]
    memory_per_instance: Option<u64>,
    /// CPU rate in cores (0.5, 500m).
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Fuel one request (or the command) may consume.
    #[arg(long)]
    fuel: Option<u64>,
    /// Instances allowed to run at once.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests that may wait for a slot when --max-concurrency is reached (the rest get 503).
    #[arg(long, default_value_t = 0)]
    queue: usize,
    /// Time limit of one request, or of the command (e.g. 5s, 250ms).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Largest request body accepted (e.g. 1Mi).
    #[arg(long, value_parser = parse_memory)]
    max_body: Option<u64>,
    /// Environment variable for the guest, KEY=VALUE (repeatable). The host's environment is never passed.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Directory for the guest, HOST:GUEST or HOST:GUEST:ro (repeatable).
    #[arg(long = "dir", value_name = "HOST:GUEST[:ro]", value_parser = parse_dir)]
    dirs: Vec<Preopen>,
    /// Host the guest may send outbound HTTP requests to (repeatable; `*` for any).
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    allow_hosts: Vec<String>,
    /// Compile cache directory (default: ~/.cache/wasmhttp).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// On Ctrl-C or SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    drain_timeout: Duration,
    /// Arguments passed to the guest after its name.
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_dir(text: &str) -> Result<Preopen, String> {
    let (rest, read_only) = match text.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (text.strip_suffix(":rw").unwrap_or(text), false),
    };
    match rest.split_once(':') {
        Some((host, guest)) if !host.is_empty() && !guest.is_empty() => Ok(Preopen {
            host: host.into(),
            guest: guest.to_string(),
            read_only,
        }),
        _ => Err(format!("{text:?} is not HOST:GUEST or HOST:GUEST:ro")),
    }
}

impl RunArgs {
    fn limits(&self) -> Limits {
        Limits {
            memory_per_instance: self.memory_per_instance,
            memory_total: self.memory,
            cpu: self.cpus,
            // One service per process: there is nothing to share the CPU with.
            cpu_shares: None,
            fuel_per_request: self.fuel,
            max_concurrency: self.max_concurrency,
            queue_depth: self.queue,
            request_timeout: self.timeout,
            max_request_body: self
                .max_body
                .unwrap_or(wasmhttp_runtime::DEFAULT_MAX_REQUEST_BODY),
        }
    }

    fn capabilities(&self) -> Capabilities {
        let name = self
            .app
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Capabilities {
            preopens: self.dirs.clone(),
            env: self.env.clone(),
            args: std::iter::once(name)
                .chain(self.args.iter().cloned())
                .collect(),
            allowed_outbound_hosts: self.allow_hosts.clone(),
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let config = EngineConfig {
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir
                .clone()
                .or_else(EngineConfig::default_cache_dir)
        },
        ..EngineConfig::default()
    };
    // Reading and hashing the binary overlaps building the engine.
    let (runtime, source) = std::thread::scope(|scope| {
        let source = scope.spawn(|| Source::from_file(&args.app));
        let runtime = Runtime::new(config);
        let source = source.join().expect("reading the binary does not panic");
        anyhow::Ok((runtime?, source?))
    })?;
    let app = runtime.load(&source)?;
    let limits = args.limits();
    let caps = args.capabilities();
    // One thread: a command runs on it; a service only accepts connections and waits for a signal here,
    // while the runtime's HTTP workers serve them.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    if !app.kind().is_http() {
        let io = CommandIo {
            stdin: Some(Box::new(tokio::io::stdin())),
            stdout: GuestOutput::stdout(),
            stderr: GuestOutput::stderr(),
        };
        let exit = tokio.block_on(wasmhttp_runtime::run_command(
            &runtime, &app, &limits, &caps, io,
        ))?;
        return Ok(ExitCode::from(exit.code as u8));
    }
    let service = Service::new(
        &runtime,
        &app,
        limits,
        caps,
        GuestOutput::stdout(),
        GuestOutput::stderr(),
    )?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tokio.block_on(async {
        let handle = service.serve(listener)?;
        // Formatted first: stderr is unbuffered, and each piece would be a write of its own.
        let ready = format!(
            "wasmhttp: serving {} on http://{} (ready in {} ms, code {})\n",
            args.app.display(),
            handle.local_addr(),
            started.elapsed().as_millis(),
            if app.from_cache() { "from cache" } else { "compiled" },
        );
        eprint!("{ready}");
        wait_for_stop_signal().await?;
        eprintln!("wasmhttp: draining (up to {:?})", args.drain_timeout);
        handle.shutdown(args.drain_timeout).await;
        let stats = handle.stats();
        let mean_instantiate = stats.instantiate_time.checked_div(stats.instantiations.max(1) as u32).unwrap_or_default();
        eprintln!(
            "wasmhttp: stopped after {} requests ({} trap, {} cpu, {} timeout, {} memory, {} overload); mean instantiation {:.1} µs",
            stats.requests_served,
            stats.failed_trap,
            stats.failed_cpu,
            stats.failed_timeout,
            stats.failed_memory,
            stats.failed_overload,
            mean_instantiate.as_secs_f64() * 1e6
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_dir_flags() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
        let ro = parse_dir("/srv:/data:ro").unwrap();
        assert!(ro.read_only && ro.guest == "/data");
        assert!(!parse_dir("/srv:/data").unwrap().read_only);
        assert!(parse_dir("/srv").is_err());
    }
}
