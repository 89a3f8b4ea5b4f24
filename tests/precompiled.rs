//! Precompiled code carried in the image, through a real containerd: a node that trusts the signer starts a
//! big guest without compiling it; a node that does not, or code signed by someone else, compiles as before.

use std::path::Path;
use std::process::Command;
use std::time::Instant;
use wasmhttp_tests::containerd::{Containerd, free_port, kill_now, run_service, wait_for_200};
use wasmhttp_tests::{binary, example, succeed};

/// `wasmhttp image keygen`: the secret key file and the public key it printed.
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let output = succeed(
        Command::new(binary("wasmhttp"))
            .args(["image", "keygen", "-o"])
            .arg(&key),
    );
    let public = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (key.display().to_string(), public)
}

/// Builds a `--sign`ed image of example `guest` and imports it; returns its reference.
fn import_signed(containerd: &Containerd, dir: &Path, guest: &str, key: &str) -> String {
    let reference = format!("docker.io/wasmhttp-test/{guest}-signed:latest");
    let tar = dir.join(format!("{guest}.tar"));
    succeed(
        Command::new(binary("wasmhttp"))
            .args([
                "image",
                "build",
                example(guest).to_str().unwrap(),
                "-t",
                &reference,
            ])
            .args(["--sign", key, "-o"])
            .arg(&tar),
    );
    containerd.ctr_ok(&["image", "import", tar.to_str().unwrap()]);
    reference
}

/// Node configuration trusting `public`.
fn trusting(dir: &Path, public: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!("[engine]\nprecompiled-signers = [\"{public}\"]\n"),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn a_node_that_trusts_the_signer_starts_the_python_guest_without_compiling() {
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "signing.key");
    let image = import_signed(&containerd, dir.path(), "python-http", &key);
    let node = trusting(dir.path(), &public);

    let port = free_port();
    let started = Instant::now();
    run_service(
        &containerd,
        &image,
        "py",
        port,
        &["--runtime-config-path", &node],
    );
    wait_for_200(([127, 0, 0, 1], port).into());
    println!(
        "FIGURE python-http first 200 from an empty compile cache, precompiled code in the image: {} ms",
        started.elapsed().as_millis()
    );
    containerd.wait_for_log("loaded precompiled code shipped with the guest");
    let log = containerd.log();
    assert!(log.contains(&public), "the log names the signer: {log}");
    assert!(
        !log.contains("compiling (not in the compile cache)"),
        "nothing was compiled: {log}"
    );
    kill_now(&containerd, "py");
}

#[test]
fn code_signed_by_a_key_the_node_does_not_trust_is_ignored_and_the_guest_compiled() {
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "stranger.key");
    let (_, public) = keygen(dir.path(), "trusted.key");
    let image = import_signed(&containerd, dir.path(), "hello", &key);

    // A node that trusts another key: the code is ignored, with the reason, and the wasm compiled.
    let port = free_port();
    let node = trusting(dir.path(), &public);
    run_service(
        &containerd,
        &image,
        "stranger",
        port,
        &["--runtime-config-path", &node],
    );
    wait_for_200(([127, 0, 0, 1], port).into());
    containerd.wait_for_log("ignoring precompiled code: its signature is not from a key");
    assert!(
        containerd
            .log()
            .contains("compiling (not in the compile cache)")
    );
    kill_now(&containerd, "stranger");

    // The default node trusts no key, and does not even read the shipped code.
    let port = free_port();
    run_service(&containerd, &image, "default", port, &[]);
    wait_for_200(([127, 0, 0, 1], port).into());
    assert!(!containerd.log().contains("loaded precompiled code"));
    kill_now(&containerd, "default");
}

#[test]
fn bad_signing_input_gets_a_clear_error_and_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "signing.key");
    let again = Command::new(binary("wasmhttp"))
        .args(["image", "keygen", "-o", &key])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains(&key));

    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, b"not a key").unwrap();
    let tar = dir.path().join("out.tar");
    for (args, expected) in [
        (
            vec!["--sign", junk.to_str().unwrap()],
            "not an Ed25519 PKCS#8 key",
        ),
        (
            vec!["--sign", &key, "--format", "artifact"],
            "--sign needs --format layer",
        ),
    ] {
        let output = Command::new(binary("wasmhttp"))
            .args([
                "image",
                "build",
                example("hello").to_str().unwrap(),
                "-t",
                "x/y:z",
                "-o",
            ])
            .arg(&tar)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(!tar.exists(), "{args:?}: nothing written");
    }
}
