//! The containerd versions wasmhttp supports, each as its own release binaries: Debian's 1.6, 1.7 and the 2.3
//! LTS (`scripts/containerd.sh`). What differs between them and is not exercised by running the other suites
//! on each version lives here.

use std::path::Path;
use std::process::Command;
use wasmhttp_tests::{binary, containerd_dist, succeed};

/// The versions, and the config version `containerd config default` of each writes.
const VERSIONS: &[(&str, i64)] = &[("system", 2), ("1.7.34", 2), ("2.3.4", 4)];

/// What a successful `command` printed, stdout then stderr (`wasmhttp install` reports on stderr).
fn run_ok(command: &mut Command) -> String {
    let output = succeed(command);
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn install(config: &Path, bin_dir: &Path) -> String {
    run_ok(
        Command::new(binary("wasmhttp"))
            .arg("install")
            .arg("--containerd-config")
            .arg(config)
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--shim")
            .arg(binary("containerd-shim-wasmhttp-v1")),
    )
}

#[test]
fn install_edits_the_config_each_version_writes_into_one_that_version_accepts() {
    for &(version, config_version) in VERSIONS {
        let containerd = containerd_dist(version).join("containerd");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let default = run_ok(Command::new(&containerd).args(["config", "default"]));
        assert!(
            default
                .lines()
                .any(|line| line == format!("version = {config_version}")),
            "{version} writes: {default}"
        );
        // An operator's comment and setting, which must survive the edit.
        let original = format!("{default}\n# kept: an operator's note\n");
        let original = original.replacen("oom_score = 0", "oom_score = -321", 1);
        std::fs::write(&config, &original).unwrap();

        let said = install(&config, &dir.path().join("bin"));
        assert!(said.contains("added runtime wasmhttp"), "{version}: {said}");
        let edited = std::fs::read_to_string(&config).unwrap();
        assert!(
            edited.contains("# kept: an operator's note") && edited.contains("oom_score = -321"),
            "{version}: {edited}"
        );
        let backups: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".bak."))
            .collect();
        assert_eq!(backups.len(), 1, "{version}: one backup");
        assert_eq!(
            std::fs::read_to_string(backups[0].path()).unwrap(),
            original
        );

        // The version itself reads it back, runtime included.
        let dump = run_ok(
            Command::new(&containerd)
                .arg("--config")
                .arg(&config)
                .args(["config", "dump"]),
        );
        let runtime: Vec<&str> = dump
            .lines()
            .skip_while(|line| !line.trim_end().ends_with("runtimes.wasmhttp]"))
            .take_while(|line| !line.trim_start().starts_with("[") || line.contains("wasmhttp]"))
            .collect();
        assert!(
            !runtime.is_empty(),
            "{version}: no wasmhttp runtime in the dump: {dump}"
        );
        let runtime = runtime.join("\n");
        assert!(
            runtime.contains("runtime_type = \"io.containerd.wasmhttp.v1\"")
                || runtime.contains("runtime_type = 'io.containerd.wasmhttp.v1'"),
            "{version}: {runtime}"
        );
        assert!(dump.contains("oom_score = -321"), "{version}: {dump}");

        let again = install(&config, &dir.path().join("bin"));
        assert!(
            again.contains("already has runtime wasmhttp"),
            "{version}: {again}"
        );
        assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    }
}

/// The example config sections in `examples/containerd/` are what their versions read: each dumps back with
/// our runtime, and 2.x keeps the Sandbox API handler's `sandboxer = "shim"`.
#[test]
fn the_example_containerd_configs_are_read_by_their_versions() {
    let examples = wasmhttp_tests::workspace().join("examples/containerd");
    for (version, file, handlers) in [
        ("system", "config-1.x.toml", &["wasmhttp"][..]),
        ("1.7.34", "config-1.x.toml", &["wasmhttp"][..]),
        (
            "2.3.4",
            "config-2.x.toml",
            &["wasmhttp", "wasmhttp-sandboxed"][..],
        ),
    ] {
        let dump = run_ok(
            Command::new(containerd_dist(version).join("containerd"))
                .arg("--config")
                .arg(examples.join(file))
                .args(["config", "dump"]),
        );
        for handler in handlers {
            let section = dump
                .split("\n\n")
                .find(|s| {
                    s.trim_end()
                        .lines()
                        .next()
                        .is_some_and(|l| l.ends_with(&format!("runtimes.{handler}]")))
                })
                .unwrap_or_else(|| panic!("{version} {file}: no {handler} runtime in: {dump}"));
            assert!(
                section.contains("io.containerd.wasmhttp.v1"),
                "{version}: {section}"
            );
            if *handler == "wasmhttp-sandboxed" {
                assert!(
                    section.contains("sandboxer = 'shim'")
                        || section.contains("sandboxer = \"shim\""),
                    "{version}: {section}"
                );
            }
        }
    }
}
