//! `wasmhttp image` against a real registry (Debian's docker-registry on loopback) and a real containerd:
//! build → push → pull → run with limits → curl → logs, for every image format, and every bad input.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;
use std::process::{Command, Output};
use wasmhttp_tests::containerd::{
    Containerd, ctr_run, free_port, is_1_6, log_holding, node_config_listing, run_service,
    wait_for_200,
};
use wasmhttp_tests::registry::Registry;
use wasmhttp_tests::{binary, example};

fn wasmhttp(args: &[&str]) -> Output {
    wasmhttp_with(args, &[])
}

fn wasmhttp_with(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(binary("wasmhttp"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one-line error of a failed command.
fn fails(output: Output) -> String {
    assert!(!output.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

use wasmhttp_tests::build_image as build;

/// Builds example `wasm` in `format`, pushes it to `registry` as `repository:v1`, and returns its reference
/// and the manifest the registry serves.
fn build_and_push(
    registry: &Registry,
    wasm: &str,
    repository: &str,
    format: &str,
) -> (String, String) {
    let reference = format!("{}/{repository}:v1", registry.host);
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    build(wasm, &reference, format, &tar);
    push(&tar, &reference);
    let manifest = skopeo_inspect(&format!("docker://{reference}"));
    (reference, manifest)
}

fn push(tar: &Path, reference: &str) {
    ok(image_push(tar, reference, &[]), "image push");
}

/// `wasmhttp image push TAR REFERENCE --plain-http`, with `env` set.
fn image_push(tar: &Path, reference: &str, env: &[(&str, &Path)]) -> Output {
    let tar = tar.to_str().unwrap();
    wasmhttp_with(&["image", "push", tar, reference, "--plain-http"], env)
}

/// `wasmhttp image pull REFERENCE -o OUT --plain-http`, with `env` set.
fn image_pull(reference: &str, out: &Path, env: &[(&str, &Path)]) -> Output {
    let out = out.to_str().unwrap();
    wasmhttp_with(
        &["image", "pull", reference, "-o", out, "--plain-http"],
        env,
    )
}

/// The output of `program ARGS`, a tool scripts/test.sh installs, which must succeed.
fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed by scripts/test.sh: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn umoci(args: &[&str]) {
    tool("umoci", args);
}

fn skopeo_inspect(target: &str) -> String {
    tool(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", target],
    )
}

#[test]
fn a_layer_image_is_pushed_pulled_by_ctr_and_runs_with_limits() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/logger:v1", registry.host);
    let tar = dir.path().join("logger.tar");
    build("logger", &reference, "layer", &tar);
    skopeo_inspect(&format!("oci-archive:{}", tar.display()));
    push(&tar, &reference);
    let manifest = skopeo_inspect(&format!("docker://{reference}"));
    assert!(
        manifest.contains("org.opencontainers.image.title"),
        "{manifest}"
    );

    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let log = dir.path().join("logger.log");
    let log_uri = format!("file://{}", log.display());
    let port = free_port();
    run_service(
        &containerd,
        &reference,
        "pulled",
        port,
        &[
            "--memory-limit",
            "67108864",
            "--cpus",
            "0.5",
            "--log-uri",
            &log_uri,
            "--runtime-config-path",
            node_config_listing(dir.path()).to_str().unwrap(),
        ],
    );
    assert_eq!(wait_for_200(([127, 0, 0, 1], port).into()), "logged /\n");
    let text = log_holding(&log, &["logger stdout: GET /"]);
    assert!(text.contains("logger stdout: GET /"), "{text}");
    let metrics = containerd.ctr_ok(&["task", "metrics", "pulled"]);
    assert!(
        metrics.contains("67108864"),
        "the memory limit shows: {metrics}"
    );

    // wasmhttp's own pull gives back the same image, ready for `ctr image import`.
    let pulled = dir.path().join("pulled.tar");
    ok(image_pull(&reference, &pulled, &[]), "image pull");
    let again = skopeo_inspect(&format!("oci-archive:{}", pulled.display()));
    assert_eq!(
        again, manifest,
        "the pulled manifest is byte-for-byte the pushed one"
    );
    containerd.ctr_ok(&["image", "import", pulled.to_str().unwrap()]);
}

#[test]
fn an_oci_wasm_image_runs_from_its_own_wasm_layer_with_no_annotation() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let (reference, manifest) = build_and_push(&registry, "hello", "hello-oci-wasm", "oci-wasm");
    assert!(
        manifest.contains("application/vnd.oci.image.config.v1+json")
            && manifest.contains("\"application/wasm\""),
        "{manifest}"
    );
    let pulled = containerd.ctr(&["image", "pull", "--plain-http", &reference]);
    if is_1_6() {
        // Before 1.7.7, containerd unpacks every layer and refuses one that is not a filesystem.
        let said = String::from_utf8_lossy(&pulled.stderr);
        assert!(
            !pulled.status.success()
                && said.contains("mismatched image rootfs and manifest layers"),
            "1.6 pulled an oci-wasm image: {said}"
        );
        return;
    }
    ok(pulled, "ctr image pull");
    // No annotation and no rootfs of its own: the shim finds the wasm as the container's image's layer.
    let port = free_port();
    run_service(
        &containerd,
        &reference,
        "oci-wasm",
        port,
        &["--memory-limit", "67108864"],
    );
    assert_eq!(
        wait_for_200(([127, 0, 0, 1], port).into()),
        "Hello from wasmhttp!\n"
    );
}

#[test]
fn a_wasm_artifact_runs_from_the_content_store() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let (reference, manifest) = build_and_push(&registry, "hello", "hello-artifact", "artifact");
    assert!(
        manifest.contains("application/vnd.wasm.config.v0+json")
            && manifest.contains("\"application/wasm\""),
        "{manifest}"
    );
    // containerd 1.6 cannot unpack an artifact, so the container gets an empty rootfs and the annotation names
    // the image whose wasm layer the shim reads from the content store.
    let empty = dir.path().join("empty-rootfs");
    std::fs::create_dir(&empty).unwrap();
    // Such a container has no image of its own, so only a node that allows any image lets the annotation name one.
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[security]\nimage-annotation = \"any\"\n").unwrap();
    let run = |image: &str, id: &str| {
        let port = free_port();
        let env = format!("PORT={port}");
        let annotation = format!("wasmhttp.io/image={image}");
        let output = ctr_run(
            &containerd,
            "-d",
            &[
                "--net-host",
                "--env",
                &env,
                "--memory-limit",
                "67108864",
                "--annotation",
                &annotation,
                "--runtime-config-path",
                node.to_str().unwrap(),
                "--rootfs",
                empty.to_str().unwrap(),
                id,
                "hello.wasm",
            ],
        );
        ok(output, "ctr run --rootfs");
        assert_eq!(
            wait_for_200(([127, 0, 0, 1], port).into()),
            "Hello from wasmhttp!\n"
        );
    };
    containerd.ctr_ok(&["content", "fetch", "--plain-http", &reference]);
    run(&reference, "fetched");

    let imported = "example.com/imported-artifact:v1";
    build(
        "hello",
        imported,
        "artifact",
        &dir.path().join("imported.tar"),
    );
    containerd.ctr_ok(&[
        "image",
        "import",
        "--no-unpack",
        dir.path().join("imported.tar").to_str().unwrap(),
    ]);
    run(imported, "imported");

    let missing = ctr_run(
        &containerd,
        "--rm",
        &[
            "--net-host",
            "--annotation",
            "wasmhttp.io/image=example.com/nowhere:v1",
            "--runtime-config-path",
            node.to_str().unwrap(),
            "--rootfs",
            empty.to_str().unwrap(),
            "missing",
            "app.wasm",
        ],
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success()
            && stderr.contains("image example.com/nowhere:v1 is not in containerd"),
        "{stderr}"
    );
    let _ = containerd.ctr(&["container", "rm", "missing"]);
}

#[test]
fn a_corrupted_blob_or_a_non_wasm_image_is_refused_and_nothing_is_written() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/hello:v1", registry.host);
    let tar = dir.path().join("hello.tar");
    build("hello", &reference, "artifact", &tar);
    push(&tar, &reference);
    let out = dir.path().join("pulled.tar");
    let pull = |reference: &str| image_pull(reference, &out, &[]);

    // A registry whose storage was tampered with: the wasm layer's bytes no longer match their digest.
    let manifest: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&format!("docker://{reference}"))).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.trim_start_matches("sha256:");
    let blob = registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let mismatch = fails(pull(&reference));
    assert!(mismatch.contains("digest mismatch"), "{mismatch}");
    assert!(!out.exists(), "nothing written on a digest mismatch");

    // A well-formed image whose entrypoint is not wasm (a Linux binary, say).
    let not_wasm = dir.path().join("not-wasm.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho not wasm\n").unwrap();
    let refused = fails(wasmhttp(&[
        "image",
        "build",
        not_wasm.to_str().unwrap(),
        "-t",
        "example.com/x:v1",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(refused.contains("is not a WebAssembly binary"), "{refused}");
    assert!(!out.exists(), "nothing written when the build is refused");
    let hello = example("hello");
    let refused = fails(wasmhttp(&[
        "image",
        "build",
        hello.to_str().unwrap(),
        "-t",
        "example.com/x:v1",
        "--port",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(refused.contains("--port"), "{refused}");
    assert!(
        !out.exists(),
        "nothing written for a port nobody could reach"
    );
    let linux = dir.path().join("linux-layout");
    let layout = linux.to_str().unwrap();
    umoci(&["init", "--layout", layout]);
    umoci(&["new", "--image", &format!("{layout}:v1")]);
    let rootfs = dir.path().join("linux-rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(rootfs.join("app.wasm"), b"#!/bin/sh\n").unwrap();
    umoci(&[
        "insert",
        "--image",
        &format!("{layout}:v1"),
        rootfs.join("app.wasm").to_str().unwrap(),
        "/app.wasm",
    ]);
    umoci(&[
        "config",
        "--image",
        &format!("{layout}:v1"),
        "--config.entrypoint",
        "/app.wasm",
    ]);
    let linux_reference = registry.push(&format!("oci:{layout}:v1"), "linux:v1");
    let refused = fails(pull(&linux_reference));
    assert!(refused.contains("not a wasm image"), "{refused}");
    assert!(!out.exists(), "nothing written for a non-wasm image");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[test]
fn an_image_index_is_pulled_as_the_manifest_it_lists_for_wasm() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    // Two images in the registry; an index lists the one for this host's platform first, the wasm one second.
    let mut entries = Vec::new();
    for (wasm, os, architecture) in [("echo", "linux", "amd64"), ("hello", "wasip2", "wasm")] {
        let reference = format!("{}/multi:{wasm}", registry.host);
        let tar = dir.path().join(format!("{wasm}.tar"));
        build(wasm, &reference, "layer", &tar);
        let pushed = ok(image_push(&tar, &reference, &[]), "image push");
        let digest = pushed.trim().rsplit('@').next().unwrap().to_string();
        let size = skopeo_inspect(&format!("docker://{reference}")).len();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": os, "architecture": architecture},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index_file = dir.path().join("index.json");
    std::fs::write(&index_file, index.to_string()).unwrap();
    let url = format!("http://{}/v2/multi/manifests/v1", registry.host);
    let put = Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.oci.image.index.v1+json")
        .arg("--data-binary")
        .arg(format!("@{}", index_file.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let out = dir.path().join("pulled.tar");
    let reference = format!("{}/multi:v1", registry.host);
    let said = ok(image_pull(&reference, &out, &[]), "image pull of an index");
    let wasm_entry = index["manifests"][1]["digest"].as_str().unwrap();
    assert!(said.contains(&format!("@{wasm_entry} to")), "{said}");
    let pulled = skopeo_inspect(&format!("oci-archive:{}", out.display()));
    let hello = skopeo_inspect(&format!("docker://{}/multi:hello", registry.host));
    assert_eq!(pulled, hello, "the wasm entry's manifest, byte for byte");
}

#[test]
fn an_image_repeating_a_layer_is_pulled_and_pushed_again_unchanged() {
    // Builders repeat identical layers: umoci gives the same file inserted twice the same layer digest.
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = format!("{}:v1", layout.display());
    let hello = example("hello");
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    for _ in 0..2 {
        umoci(&[
            "insert",
            "--image",
            &image,
            hello.to_str().unwrap(),
            "/app.wasm",
        ]);
    }
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/app.wasm",
    ]);
    let reference = registry.push(&format!("oci:{image}"), "twice:v1");
    let manifest: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&format!("docker://{reference}"))).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        layers[0]["digest"], layers[1]["digest"],
        "one layer, named twice"
    );

    let tar = dir.path().join("twice.tar");
    ok(image_pull(&reference, &tar, &[]), "image pull");
    let again = format!("{}/twice-again:v1", registry.host);
    ok(image_push(&tar, &again, &[]), "image push");
    assert_eq!(
        skopeo_inspect(&format!("docker://{again}")),
        skopeo_inspect(&format!("docker://{reference}")),
        "the same manifest, byte for byte"
    );
}

#[path = "image/readme.rs"]
mod readme;

#[path = "image/registry_limits.rs"]
mod registry_limits;

#[path = "image/registry_errors.rs"]
mod registry_errors;
