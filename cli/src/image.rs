//! `wasmhttp image build`: an OCI image-layout tar holding the .wasm in a normal tar layer, with the
//! entrypoint set, which `ctr image import` accepts on containerd 1.6 and later.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an OCI image-layout tar from a .wasm file.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The wasm binary to package.
    app: PathBuf,
    /// Image reference, e.g. docker.io/library/hello:latest.
    #[arg(short = 't', long = "tag")]
    tag: String,
    /// Output tar (an OCI image layout).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Environment variable baked into the image, KEY=VALUE (repeatable); PORT selects the listen port.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Port the service listens on (sets PORT).
    #[arg(long)]
    port: Option<u16>,
}

/// Where the wasm sits in the image's filesystem; the entrypoint.
const WASM_PATH: &str = "app.wasm";

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build(args) => build(args),
    }
}

struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Blob {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            bytes,
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.app).with_context(|| format!("cannot read {}", args.app.display()))?;
    if !wasm.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly binary", args.app.display());
    }
    if args.tag.is_empty() || args.tag.contains(char::is_whitespace) {
        bail!("invalid image reference {:?}", args.tag);
    }
    for kv in &args.env {
        if !kv.contains('=') || kv.starts_with('=') {
            bail!("--env {kv:?} is not KEY=VALUE");
        }
    }
    let mut env = args.env.clone();
    if let Some(port) = args.port {
        env.retain(|kv| !kv.starts_with("PORT="));
        env.push(format!("PORT={port}"));
    }
    let layer = Blob::new(tar_of(&[(WASM_PATH, &wasm)])?);
    let config = Blob::new(serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Entrypoint": [format!("/{WASM_PATH}")], "Env": env },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    }))?);
    let title = args
        .app
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = Blob::new(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.bytes.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.bytes.len() }],
        "annotations": {
            "org.opencontainers.image.title": title,
            "org.opencontainers.image.source": args.app.display().to_string(),
        },
    }))?);
    let short_tag = args
        .tag
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.bytes.len(),
            "annotations": { "io.containerd.image.name": args.tag, "org.opencontainers.image.ref.name": short_tag },
        }],
    }))?;
    let blob_path = |b: &Blob| format!("blobs/sha256/{}", b.digest.trim_start_matches("sha256:"));
    let layout = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&blob_path(&layer), &layer.bytes),
        (&blob_path(&config), &config.bytes),
        (&blob_path(&manifest), &manifest.bytes),
    ])?;
    // Write beside the target and rename, so a failure never leaves a half-written tar.
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    tmp.write_all(&layout)?;
    tmp.persist(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wasmhttp: wrote {} ({}, manifest {})",
        args.output.display(),
        args.tag,
        manifest.digest
    );
    Ok(())
}

/// The image's architecture: the host's, in OCI (Go) spelling, so `ctr image import` matches it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A deterministic tar of regular files (fixed mtime, owner and mode), so the same wasm gives the same digest.
fn tar_of(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *bytes)?;
    }
    Ok(builder.into_inner()?)
}
