//! `wasmhttp run`: flags → `Limits` + `Capabilities` → serve or run.

use crate::knob_flags::KnobFlags;
use anyhow::Context;
use clap::Args;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use wasmhttp_runtime::prometheus::{MetricsEndpoint, MetricsSet, Observed};
use wasmhttp_runtime::telemetry::{RequestTracer, TracingConfig};
use wasmhttp_runtime::{
    Capabilities, CommandIo, EngineConfig, FileUser, GuestOutput, Layers, Limits, Preopen, Runtime,
    Service, Source, fold,
};

/// Where `wasmhttp run` serves when `--listen` is not given.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

#[derive(Args)]
pub struct RunArgs {
    /// The wasm binary: a wasi:http component, a wasi:cli command, or a WASI preview 1 module.
    app: PathBuf,
    /// Address to serve HTTP on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve Prometheus metrics at http://ADDR/metrics (the series a pod's endpoint has).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Every limit and knob (`--memory`, `--request-timeout`, … as in README's table).
    #[command(flatten)]
    knobs: KnobFlags,
    /// Environment variable for the guest, KEY=VALUE (repeatable). The host's environment is never passed.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = wasmhttp_runtime::parse_env_var)]
    env: Vec<(String, String)>,
    /// Directory for the guest, HOST:GUEST or HOST:GUEST:ro (repeatable).
    #[arg(long = "dir", value_name = "HOST:GUEST[:ro]", value_parser = parse_dir)]
    dirs: Vec<Preopen>,
    /// Check the guest's access to `--dir` directories as this user, as a container's `process.user`
    /// (UID:GID or UID:GID:GROUP,GROUP…; needs root).
    #[arg(long, value_name = "UID:GID[:GROUPS]", value_parser = parse_user)]
    user: Option<FileUser>,
    /// Host the guest may send outbound HTTP requests to (repeatable; `*` for any).
    #[arg(long = "allow-host", value_name = "HOST[:PORT]", value_parser = wasmhttp_runtime::parse_allowed_host)]
    allow_hosts: Vec<String>,
    /// Compile cache directory (default: ~/.cache/wasmhttp).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// Bytes of written pages a free instance slot keeps for the next instance, as the node's
    /// `[engine] slot-keep-resident` [default: 64Ki].
    #[arg(long, value_name = "SIZE", value_parser = wasmhttp_runtime::knobs::value::size::parse)]
    slot_keep_resident: Option<u64>,
    /// Arguments passed to the guest after its name.
    #[arg(last = true)]
    args: Vec<String>,
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

fn parse_user(text: &str) -> Result<FileUser, String> {
    let invalid = || format!("{text:?} is not UID:GID or UID:GID:GROUP,GROUP…");
    let mut parts = text.splitn(3, ':');
    let id = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok()).ok_or_else(invalid);
    let (uid, gid) = (id(parts.next())?, id(parts.next())?);
    let groups = match parts.next() {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|g| g.parse::<u32>().map_err(|_| invalid()))
            .collect::<Result<_, _>>()?,
    };
    Ok(FileUser { uid, gid, groups })
}

impl RunArgs {
    /// The flags folded over the same built-in defaults the shim uses. Whoever runs the CLI is the operator
    /// of what it serves, so the flags take the place of the OCI spec (which the default only stands in for)
    /// rather than of a tenant's annotations: any value is accepted, looser than the default included.
    fn limits(&self) -> Limits {
        let layers = Layers {
            oci: self.knobs.0.clone(),
            oci_at_create: self.knobs.0.clone(),
            ..Layers::default()
        };
        fold(&layers).expect("without overrides nothing is refused")
    }

    fn capabilities(&self) -> Capabilities {
        let name = self
            .app
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Capabilities {
            preopens: self.dirs.clone(),
            env: wasmhttp_runtime::dedup_env(self.env.clone()),
            args: std::iter::once(name)
                .chain(self.args.iter().cloned())
                .collect(),
            allowed_outbound_hosts: self.allow_hosts.clone(),
            file_user: self.user.clone().map(Arc::new),
            // The host's network and resolver, minus the link-local (cloud metadata) ranges.
            ..Capabilities::default()
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir
                .clone()
                .or_else(EngineConfig::default_cache_dir)
        },
        charge_whole_process: true,
        slot_keep_resident: args
            .slot_keep_resident
            .unwrap_or(defaults.slot_keep_resident),
        ..defaults
    };
    // Reading and hashing the binary overlaps building the engine.
    let (runtime, source) = std::thread::scope(|scope| {
        let source = scope.spawn(|| Source::from_file(&args.app));
        let runtime = Runtime::new(config);
        let source = source.join().expect("reading the binary does not panic");
        anyhow::Ok((runtime?, source?))
    })?;
    let app = runtime.load(&source)?;
    // The wasm bytes are compiled now; a big guest's would stay resident for nothing.
    drop(source);
    let limits = args.limits();
    let caps = args.capabilities();
    // One thread: a command runs on it; a service only accepts connections and waits for a signal here,
    // while the runtime's HTTP workers serve them.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(wasmhttp_runtime::reset_thread_file_rights)
        .build()
        .context("starting tokio")?;
    if !app.kind().is_http() {
        warn_server_flags(&args);
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
    let listen = args.listen.unwrap_or(DEFAULT_LISTEN);
    let drain_timeout = limits.drain_timeout.unwrap_or_default();
    let service = Service::new(
        &runtime,
        &app,
        limits,
        caps,
        GuestOutput::stdout(),
        GuestOutput::stderr(),
    )?;
    // Traces go where the standard OTEL_* environment says, as for any OpenTelemetry program.
    let tracer = TracingConfig::from_env(|key| std::env::var(key).ok())
        .map_err(anyhow::Error::msg)?
        .map(|config| {
            let name = args.app.file_name().unwrap_or_default().to_string_lossy();
            RequestTracer::new(&config, &name).map_err(anyhow::Error::msg)
        })
        .transpose()?;
    let service = match &tracer {
        Some(tracer) => service.with_tracing(tracer.clone(), Vec::new()),
        None => service,
    };
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let metrics_listener = args
        .metrics
        .map(|addr| {
            TcpListener::bind(addr).with_context(|| format!("--metrics: cannot listen on {addr}"))
        })
        .transpose()?;
    tokio.block_on(async {
        let handle = std::sync::Arc::new(service.serve(listener)?);
        let metrics = match metrics_listener {
            Some(listener) => {
                let set = MetricsSet::default();
                let source: std::sync::Arc<dyn Observed> = handle.clone();
                let name = args.app.file_name().unwrap_or_default().to_string_lossy();
                set.add(vec![("app".into(), name.into_owned())], std::sync::Arc::downgrade(&source));
                let endpoint = MetricsEndpoint::serve(listener, set)?;
                Some((endpoint, source))
            }
            None => None,
        };
        // Formatted first: stderr is unbuffered, and each piece would be a write of its own.
        let ready = format!(
            "wasmhttp: serving {} ({}) on http://{} (ready in {} ms, code {})\n",
            args.app.display(),
            app.wasi(),
            handle.local_addr(),
            started.elapsed().as_millis(),
            app.origin(),
        );
        eprint!("{ready}");
        if let Some((endpoint, _)) = &metrics {
            eprintln!("wasmhttp: metrics on http://{}/metrics", endpoint.local_addr());
        }
        wait_for_stop_signal().await?;
        eprintln!("wasmhttp: draining (up to {drain_timeout:?})");
        handle.shutdown(drain_timeout).await;
        if let Some(tracer) = &tracer {
            tracer.shutdown();
        }
        let stats = handle.stats();
        let mean_instantiate = stats.instantiate_time.checked_div(stats.instantiations.max(1) as u32).unwrap_or_default();
        eprintln!(
            "wasmhttp: stopped after {} requests ({} answered by the guest; refused: {} trap, {} fuel, {} timeout, {} memory, {} over capacity, {} cancelled); mean instantiation {:.1} µs",
            stats.requests_total(),
            stats.requests_served,
            stats.failed_trap,
            stats.failed_fuel,
            stats.failed_timeout,
            stats.failed_memory,
            stats.failed_overload,
            stats.failed_cancelled,
            mean_instantiate.as_secs_f64() * 1e6
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A command runs once and serves nothing: flags that only shape a server would be silently ignored.
fn warn_server_flags(args: &RunArgs) {
    let knobs = &args.knobs.0;
    let given: Vec<&str> = [
        ("--listen", args.listen.is_some()),
        ("--metrics", args.metrics.is_some()),
        ("--max-concurrency", knobs.max_concurrency.is_some()),
        ("--queue-depth", knobs.queue_depth.is_some()),
        ("--max-request-body", knobs.max_request_body.is_some()),
        ("--drain-timeout", knobs.drain_timeout.is_some()),
        ("--max-instance-reuse", knobs.max_instance_reuse.is_some()),
        (
            "--max-instance-concurrency",
            knobs.max_instance_concurrency.is_some(),
        ),
        (
            "--idle-instance-timeout",
            knobs.idle_instance_timeout.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    if !given.is_empty() {
        eprintln!(
            "wasmhttp: warning: {} is a command, not an HTTP service: {} ignored",
            args.app.display(),
            given.join(", ")
        );
    }
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
    fn dir_and_user_flags() {
        let ro = parse_dir("/srv:/data:ro").unwrap();
        assert!(ro.read_only && ro.guest == "/data");
        assert!(!parse_dir("/srv:/data").unwrap().read_only);
        assert!(parse_dir("/srv").is_err());
        assert_eq!(
            parse_user("1000:1001:5,6").unwrap(),
            FileUser {
                uid: 1000,
                gid: 1001,
                groups: vec![5, 6]
            }
        );
        assert!(parse_user("1000:1001").unwrap().groups.is_empty());
        for bad in ["1000", "a:1", "1:2:x"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_looser_than_the_defaults_are_taken() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "run",
            "app.wasm",
            "--memory",
            "2Gi",
            "--request-timeout",
            "10m",
        ])
        .unwrap();
        let limits = cli.run.limits();
        assert_eq!(
            cli.run.slot_keep_resident, None,
            "unset: the engine's default"
        );
        assert_eq!(limits.memory, Some(2 << 30));
        assert_eq!(
            limits.request_timeout,
            Some(std::time::Duration::from_secs(600))
        );
        let kept = <Cli as clap::Parser>::try_parse_from([
            "run",
            "app.wasm",
            "--slot-keep-resident",
            "1Mi",
        ])
        .unwrap();
        assert_eq!(kept.run.slot_keep_resident, Some(1 << 20));
        let bad = <Cli as clap::Parser>::try_parse_from([
            "run",
            "app.wasm",
            "--slot-keep-resident",
            "lots",
        ]);
        assert!(
            bad.err()
                .unwrap()
                .to_string()
                .contains("--slot-keep-resident")
        );
    }
}
