//! Command mode: exit codes, output, limits and isolation of WASI commands.

mod common;

use common::*;
use std::time::Duration;
use wasmhttp_runtime::*;

fn caps(args: &[&str], env: &[(&str, &str)]) -> Capabilities {
    Capabilities {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Capabilities::default()
    }
}

#[tokio::test]
async fn hello_cli_exits_with_its_code_and_prints_args_and_env_only() {
    let runtime = runtime();
    let app = runtime.load(&example("hello-cli")).unwrap();
    let (stdout, stderr) = (Capture::default(), Capture::default());
    let io = CommandIo {
        stdin: None,
        stdout: stdout.output(),
        stderr: stderr.output(),
    };
    let exit = run_command(
        &runtime,
        &app,
        &Limits::default(),
        &caps(&["hello-cli", "7", "extra"], &[("GREETING", "hi")]),
        io,
    )
    .await
    .unwrap();
    assert_eq!(exit.code, 7);
    assert!(exit.failure.is_none());
    assert_eq!(
        stdout.text(),
        "arg[0]=hello-cli\narg[1]=7\narg[2]=extra\nenv GREETING=hi\n"
    );
    assert_eq!(stderr.text(), "hello-cli done\n");
    assert!(
        std::env::var("PATH").is_ok() && !stdout.text().contains("PATH="),
        "host env is not inherited"
    );
}

#[tokio::test]
async fn a_preview1_module_runs_with_its_exit_code() {
    let runtime = runtime();
    let wasm = wat::parse_str(include_str!("p1_command.wat")).unwrap();
    let app = runtime.load(&Source::from_bytes("p1.wasm", wasm)).unwrap();
    let stdout = Capture::default();
    let io = CommandIo {
        stdout: stdout.output(),
        ..CommandIo::default()
    };
    let exit = run_command(
        &runtime,
        &app,
        &Limits::default(),
        &Capabilities::default(),
        io,
    )
    .await
    .unwrap();
    assert_eq!(exit.code, 3);
    assert_eq!(stdout.text(), "p1 says hi\n");
}

#[tokio::test]
async fn a_command_stopped_by_a_limit_gets_the_documented_code_and_a_message() {
    let runtime = runtime();
    let app = runtime
        .load(&Source::from_bytes(
            "spin.wasm",
            wat::parse_str(include_str!("spin.wat")).unwrap(),
        ))
        .unwrap();

    let stderr = Capture::default();
    let io = CommandIo {
        stderr: stderr.output(),
        ..CommandIo::default()
    };
    let limits = Limits {
        request_timeout: Some(Duration::from_millis(100)),
        ..Limits::default()
    };
    let exit = run_command(&runtime, &app, &limits, &Capabilities::default(), io)
        .await
        .unwrap();
    assert_eq!(exit.code, EXIT_TIMEOUT);
    assert!(
        stderr
            .text()
            .contains("spin.wasm stopped: deadline exceeded"),
        "{}",
        stderr.text()
    );

    let stderr = Capture::default();
    let io = CommandIo {
        stderr: stderr.output(),
        ..CommandIo::default()
    };
    let limits = Limits {
        fuel_per_request: Some(1_000_000),
        ..Limits::default()
    };
    let exit = run_command(&runtime, &app, &limits, &Capabilities::default(), io)
        .await
        .unwrap();
    assert_eq!(
        (exit.code, exit.failure.map(|f| f.0)),
        (EXIT_TRAP, Some(FailureCause::Fuel))
    );
    assert!(
        stderr.text().contains("fuel exhausted"),
        "{}",
        stderr.text()
    );
}
