//! `wasmhttp image build`: an OCI image of a .wasm file, in one of three forms. `layer` (the default) is a
//! standard image whose tar layer holds `/app.wasm`, the entrypoint; every containerd unpacks and runs it.
//! `oci-wasm` is an OCI image config (platform `wasip2/wasm`) with one `application/wasm` layer that is the
//! binary itself: containerd 1.7.7+ skips that layer when unpacking (an empty rootfs) and the shim reads it
//! from containerd's content store. `artifact` is the CNCF TAG-Runtime wasm artifact: the same layer under a
//! `application/vnd.wasm.config.v0+json` config, whose media type containerd's own clients refuse to run.

use super::layout::{self, Blob, Image};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use wasmhttp_runtime::{EngineConfig, Runtime, Source, precompiled};

/// The image forms `build` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A standard image: a tar layer holding /app.wasm, entrypoint set.
    Layer,
    /// An OCI image config (wasip2/wasm) and one application/wasm layer; containerd 1.7.7+.
    OciWasm,
    /// The wasm OCI artifact: wasm config, one application/wasm layer.
    Artifact,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The wasm binary to package.
    app: PathBuf,
    /// Image reference, e.g. localhost:5000/hello:v1.
    #[arg(short = 't', long = "tag")]
    tag: String,
    /// Output tar (an OCI image layout).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Image form.
    #[arg(long, value_enum, default_value_t = Format::Layer)]
    format: Format,
    /// Environment variable baked into the image, KEY=VALUE (repeatable; not for `artifact`).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Port the service listens on (sets PORT; not for `artifact`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Also ship the code compiled for nodes with the default [engine] settings, signed with this Ed25519
    /// key (`wasmhttp image keygen`): nodes listing its public key in [engine] precompiled-signers start the
    /// service without compiling it. `--format layer` only.
    #[arg(long, value_name = "KEY_FILE")]
    sign: Option<PathBuf>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (PKCS#8, mode 0600); never overwritten.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

/// Writes a new signing key and prints its public key, the value for `[engine] precompiled-signers`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = precompiled::generate_key().map_err(anyhow::Error::msg)?;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    file.write_all(&secret)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!("{public}");
    eprintln!(
        "wasmhttp: wrote the secret key to {}; nodes trust it with [engine] precompiled-signers = [\"{public}\"]",
        args.output.display()
    );
    Ok(())
}

/// The files a `--sign`ed layer adds: the code compiled for the default node engine and its signature.
fn signed_code(
    wasm: &[u8],
    app: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let secret = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    // A bad key fails before the compile, which takes seconds for a big guest.
    precompiled::public_key(&secret).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let source = Source::from_bytes(app.display().to_string(), wasm.to_vec());
    let (hash, code) = Runtime::new(EngineConfig::default())?.precompile(&source)?;
    let signature = precompiled::sign(&secret, source.digest(), &hash, &code)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let (code_name, sig_name) = precompiled::file_names(&hash);
    let dir = precompiled::IMAGE_DIR.trim_start_matches('/');
    Ok(vec![
        (format!("{dir}/{code_name}"), code),
        (format!("{dir}/{sig_name}"), signature),
    ])
}

/// Where the wasm sits in a `layer` image's filesystem; the entrypoint.
const WASM_PATH: &str = "app.wasm";

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.app).with_context(|| format!("cannot read {}", args.app.display()))?;
    if !wasm.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly binary", args.app.display());
    }
    oci_spec::distribution::Reference::try_from(args.tag.as_str())
        .with_context(|| format!("invalid image reference {:?}", args.tag))?;
    for kv in &args.env {
        wasmhttp_runtime::parse_env_var(kv).map_err(|e| anyhow::anyhow!("--env {e}"))?;
    }
    let title = args
        .app
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let created = created_timestamp();
    let annotations = json!({
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.source": args.app.display().to_string(),
        "org.opencontainers.image.created": created,
    });
    let mut env = args.env.clone();
    if let Some(port) = args.port {
        env.retain(|kv| !kv.starts_with("PORT="));
        env.push(format!("PORT={port}"));
    }
    if args.sign.is_some() && args.format != Format::Layer {
        bail!(
            "--sign needs --format layer: the precompiled code is a file in the image's filesystem"
        );
    }
    let (config_type, config, layer_type, layer) = match args.format {
        Format::Layer => {
            let signed = match &args.sign {
                Some(key) => signed_code(&wasm, &args.app, key)?,
                None => Vec::new(),
            };
            let mut files = vec![(WASM_PATH.to_string(), wasm)];
            files.extend(signed);
            let files: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(p, b)| (p.as_str(), b.as_slice()))
                .collect();
            let layer = Blob::new(layout::tar_of(&files)?);
            let config = json!({
                "created": created,
                "architecture": wasmhttp_oci::host_architecture().to_string(),
                "os": "linux",
                "config": { "Entrypoint": [format!("/{WASM_PATH}")], "Env": env },
                "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
            });
            (
                layout::CONFIG_TYPE,
                config,
                wasmhttp_oci::TAR_LAYER_TYPE,
                layer,
            )
        }
        Format::OciWasm => {
            let layer = Blob::new(wasm);
            // No diff IDs: the wasm layer is not a filesystem layer, so containerd unpacks none.
            let config = json!({
                "created": created,
                "architecture": "wasm",
                "os": "wasip2",
                "config": { "Entrypoint": [format!("/{WASM_PATH}")], "Env": env },
                "rootfs": { "type": "layers", "diff_ids": [] },
            });
            (
                layout::CONFIG_TYPE,
                config,
                wasmhttp_oci::WASM_LAYER_TYPE,
                layer,
            )
        }
        Format::Artifact => {
            if !args.env.is_empty() || args.port.is_some() {
                bail!(
                    "--env and --port are not for --format artifact: the wasm artifact's config has no \
                     environment"
                );
            }
            let layer = Blob::new(wasm);
            let config = json!({
                "created": created,
                "architecture": "wasm",
                "os": "wasip2",
                "layerDigests": [layer.digest],
            });
            (
                layout::WASM_CONFIG_TYPE,
                config,
                wasmhttp_oci::WASM_LAYER_TYPE,
                layer,
            )
        }
    };
    let config = Blob::new(serde_json::to_vec(&config)?);
    let mut layer_descriptor = layer.descriptor(layer_type);
    layer_descriptor["annotations"] = json!({ "org.opencontainers.image.title": title });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": layout::MANIFEST_TYPE,
        "config": config.descriptor(config_type),
        "layers": [layer_descriptor],
        "annotations": annotations,
    }))?;
    let blobs = HashMap::from([(config.digest, config.bytes), (layer.digest, layer.bytes)]);
    let image = Image::new(manifest, blobs)?;
    layout::write(&args.output, &args.tag, &image)?;
    eprintln!(
        "wasmhttp: wrote {} ({}, manifest {})",
        args.output.display(),
        args.tag,
        image.manifest.digest
    );
    Ok(())
}

/// RFC 3339 UTC time of the build, or of `SOURCE_DATE_EPOCH` for reproducible builds.
fn created_timestamp() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The image's architecture: the host's, in OCI (Go) spelling, so `ctr image import` matches it.
#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
