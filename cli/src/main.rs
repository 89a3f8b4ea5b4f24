//! `wasmhttp`: the developer command line. `wasmhttp run` serves or runs a wasm binary under limits
//! through the same runtime calls the containerd shim makes.

mod image;
mod install;
mod knob_flags;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wasmhttp",
    version,
    about = "Run WASI HTTP services and commands under hard limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a wasi:http component, or run a WASI command to completion.
    Run(Box<run::RunArgs>),
    /// Build OCI images of wasm services.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Install the containerd shim and register the runtime in containerd's config.
    Install(install::InstallArgs),
}

/// Host memory `wasmhttp run` allocates for a service is charged to it (see `wasmhttp_runtime::ChargingAllocator`).
#[cfg(feature = "host-memory-charging")]
#[global_allocator]
static ALLOCATOR: wasmhttp_runtime::ChargingAllocator = wasmhttp_runtime::ChargingAllocator;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, not clap's usage block: the message already names the flag at fault.
            let rendered = e.to_string();
            eprintln!(
                "wasmhttp: {}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMHTTP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or containerd's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Image(command) => image::run(command).map(|()| ExitCode::SUCCESS),
        Command::Install(args) => install::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmhttp: {e:#}");
            ExitCode::from(1)
        }
    }
}
