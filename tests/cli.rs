//! The `wasmhttp` command line, run as a user runs it.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use wasmhttp_tests::{KillOnDrop, binary, example, get};

fn wasmhttp(args: &[&str]) -> Output {
    Command::new(binary("wasmhttp"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bad_flags_missing_files_and_invalid_wasm_exit_nonzero_with_one_line() {
    let hello = example("hello");
    let hello = hello.to_str().unwrap();
    for (args, code, expected) in [
        (vec!["run", "--memory", "lots", hello], 2, "--memory"),
        (vec!["run", "--cpus", "0", hello], 2, "--cpus"),
        (vec!["run", "--cpus", "1e-300", hello], 2, "at least 1m"),
        (
            vec!["run", "--allow-host", "http://api/", hello],
            2,
            "is not a host or host:port",
        ),
        (vec!["run", "--env", "NOEQUALS", hello], 2, "KEY=VALUE"),
        (vec!["run", "--bogus", hello], 2, "--bogus"),
        (
            vec!["run", "/no/such/app.wasm"],
            1,
            "cannot read /no/such/app.wasm",
        ),
        (vec!["run", "Cargo.toml"], 1, "is not a WebAssembly binary"),
        (
            vec!["run", "--dir", "/no/such/dir:/data", hello],
            1,
            "/no/such/dir",
        ),
    ] {
        let output = Command::new(binary("wasmhttp"))
            .args(&args)
            .current_dir(wasmhttp_tests::workspace())
            .output()
            .unwrap();
        let lines = stderr_lines(&output);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {lines:?}");
        assert_eq!(
            lines.len(),
            1,
            "{args:?} must explain itself in one line: {lines:?}"
        );
        assert!(
            lines[0].starts_with("wasmhttp: ") && lines[0].contains(expected),
            "{args:?}: {lines:?}"
        );
    }
}

#[test]
fn a_command_runs_with_args_and_env_and_returns_its_exit_code() {
    let output = wasmhttp(&[
        "run",
        "--no-cache",
        "--env",
        "WHO=tests",
        example("hello-cli").to_str().unwrap(),
        "--",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(
        stdout.contains("arg[0]=hello-cli.wasm\narg[1]=5\nenv WHO=tests\n"),
        "{stdout}"
    );
}

/// A WASI 0.3 guest lists a directory with `read-directory`, which wasmtime-wasi may run on a blocking
/// thread; under `--user` it must still be checked with that user's rights, as a 0.2 listing is.
#[test]
fn a_wasi_03_directory_listing_is_checked_with_the_users_rights() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // The volume's root may be entered but not read by others; `open` may be read too.
    std::fs::create_dir(dir.path().join("open")).unwrap();
    std::fs::write(dir.path().join("open/visible"), "").unwrap();
    mode(&dir.path().join("open"), 0o755);
    mode(dir.path(), 0o711);
    let volume = format!("{}:/data", dir.path().display());
    let guest = example("hello-cli-p3");
    let ls = |user: Option<&str>, path: &str| {
        let mut args = vec!["run", "--no-cache", "--dir", &volume];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.extend([guest.to_str().unwrap(), "--", "ls", path]);
        let output = wasmhttp(&args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success(), stdout)
    };
    assert_eq!(
        ls(None, "."),
        (true, "open\n".into()),
        "root lists the volume"
    );
    assert_eq!(
        ls(Some("65534:65534"), "open"),
        (true, "visible\n".into()),
        "the user lists a directory others may read"
    );
    let (listed, stdout) = ls(Some("65534:65534"), ".");
    assert!(
        !listed && stdout.contains("read-directory .") && stdout.contains("Access"),
        "the user may enter the volume's root but not list it: {stdout}"
    );
}

#[test]
fn a_service_serves_with_limits_and_drains_on_sigterm() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let (mut child, mut stderr, addr) = serve(
        &[
            "--memory",
            "64Mi",
            "--cpus",
            "1",
            "--max-concurrency",
            "8",
            "--request-timeout",
            "2s",
            "--cache-dir",
            cache_dir,
        ],
        example("hello").to_str().unwrap(),
    );
    let reply = get(addr, "/");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello from wasmhttp!\n")
    );
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("stopped after 1 requests"), "{rest}");
    assert!(
        std::fs::read_dir(cache.path()).unwrap().count() > 0,
        "the compile cache was filled"
    );
}

#[test]
fn install_copies_the_shim_and_registers_the_runtime_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "version = 2\n").unwrap();
    let shim = binary("containerd-shim-wasmhttp-v1");
    let install = || {
        Command::new(binary("wasmhttp"))
            .args(["install", "--containerd-config", config.to_str().unwrap()])
            .args([
                "--bin-dir",
                dir.path().join("bin").to_str().unwrap(),
                "--shim",
                shim.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let first = install();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(dir.path().join("bin/containerd-shim-wasmhttp-v1").is_file());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("runtime_type = \"io.containerd.wasmhttp.v1\""),
        "{text}"
    );
    let second = install();
    assert!(String::from_utf8_lossy(&second.stderr).contains("already has runtime wasmhttp"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);

    std::fs::write(&config, "version = [\n").unwrap();
    let refused = install();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not valid TOML"));
}

#[test]
fn install_restart_runs_systemctl_only_when_the_config_changed() {
    // No systemd here: a stand-in `systemctl` first on PATH records how it was called.
    let dir = tempfile::tempdir().unwrap();
    let fake_bin = dir.path().join("fake-bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let calls = dir.path().join("systemctl-calls");
    let systemctl = fake_bin.join("systemctl");
    std::fs::write(
        &systemctl,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "version = 2\n").unwrap();
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let install = |path: &str| {
        Command::new(binary("wasmhttp"))
            .args(["install", "--restart", "--containerd-config"])
            .arg(&config)
            .arg("--bin-dir")
            .arg(dir.path().join("bin"))
            .arg("--shim")
            .arg(binary("containerd-shim-wasmhttp-v1"))
            .env("PATH", path)
            .output()
            .unwrap()
    };
    let first = install(&path);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "restart containerd\n"
    );
    let second = install(&path);
    assert!(second.status.success());
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "restart containerd\n",
        "unchanged config: no restart"
    );

    // A restart that cannot run is an error that says so.
    std::fs::write(&config, "version = 2\n").unwrap();
    let failed = install(dir.path().join("empty").to_str().unwrap());
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("cannot run systemctl"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}

/// Serves `app` with `args` on a free port; returns the child, its stderr after the first line, and the address
/// that line names.
fn serve(
    args: &[&str],
    app: &str,
) -> (KillOnDrop, BufReader<std::process::ChildStderr>, SocketAddr) {
    let mut child = KillOnDrop(
        Command::new(binary("wasmhttp"))
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg(app)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, stderr, addr)
}

#[test]
fn a_refusal_is_one_plain_line_and_the_stop_line_counts_it() {
    let (child, mut stderr, addr) = serve(&["--no-cache"], example("trap").to_str().unwrap());
    let reply = get(addr, "/");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "guest trapped\n")
    );
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let refusals: Vec<&str> = rest
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{rest}");
    assert!(refusals[0].contains("guest trapped"), "{rest}");
    assert!(
        !rest.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {rest:?}"
    );
    assert!(
        !rest.contains("wasm backtrace"),
        "the guest's backtrace is for debug level: {rest}"
    );
    assert!(
        rest.contains("stopped after 1 requests (0 answered by the guest; refused: 1 trap"),
        "{rest}"
    );
}

#[test]
fn old_flag_names_still_work_and_server_flags_on_a_command_warn() {
    let output = wasmhttp(&[
        "run",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        "--queue",
        "3",
        example("hello-cli").to_str().unwrap(),
        "--",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--queue is deprecated") && stderr.contains("use --queue-depth"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is a command, not an HTTP service: --listen, --queue-depth ignored"),
        "{stderr}"
    );
}

#[test]
fn a_wasi_03_service_is_served_with_reuse_and_its_knob_flags() {
    let counter = example("counter-p3");
    let counts = |args: &[&str]| -> Vec<u64> {
        let (child, _stderr, addr) = serve(args, counter.to_str().unwrap());
        let counts = (0..5)
            .map(|_| {
                let reply = get(addr, "/");
                assert_eq!(reply.status, 200, "{reply:?}");
                reply
                    .body
                    .trim()
                    .trim_start_matches("count: ")
                    .parse()
                    .unwrap()
            })
            .collect();
        drop(child);
        counts
    };
    let reused = counts(&["--no-cache"]);
    assert!(
        reused.iter().any(|&c| c >= 2),
        "five requests on at most two workers' instances: {reused:?}"
    );
    assert_eq!(
        counts(&["--no-cache", "--max-instance-reuse", "1"]),
        [1, 1, 1, 1, 1],
        "a fresh instance per request"
    );
    let refused = wasmhttp(&[
        "run",
        "--max-instance-concurrency",
        "0",
        counter.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--max-instance-concurrency"), "{said}");
}

#[test]
fn metrics_are_served_at_the_metrics_address_and_a_taken_one_is_refused() {
    let (_child, mut stderr, addr) = serve(
        &["--no-cache", "--metrics", "127.0.0.1:0"],
        example("hello").to_str().unwrap(),
    );
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let metrics: SocketAddr = line
        .trim()
        .strip_prefix("wasmhttp: metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 200);
    }
    let scraped = get(metrics, "/metrics");
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .body
            .contains("wasmhttp_requests_total{app=\"hello.wasm\",code=\"2xx\",cause=\"guest\"} 3"),
        "{}",
        scraped.body
    );
    assert!(
        scraped
            .body
            .contains("wasmhttp_request_duration_seconds_count{app=\"hello.wasm\"} 3")
    );
    // The process's own footprint, as the kernel counts it, beside the guest's linear memory.
    let pss = scraped
        .body
        .lines()
        .find_map(|l| l.strip_prefix("wasmhttp_process_proportional_bytes{app=\"hello.wasm\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(pss.is_some_and(|b| b > 1 << 20), "{}", scraped.body);
    assert_eq!(get(metrics, "/other").status, 404);

    let taken = metrics.to_string();
    let hello = example("hello");
    let output = wasmhttp(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        &taken,
        hello.to_str().unwrap(),
    ]);
    let lines = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(1), "{lines:?}");
    assert!(
        lines.len() == 1 && lines[0].contains(&format!("--metrics: cannot listen on {taken}")),
        "{lines:?}"
    );
}
