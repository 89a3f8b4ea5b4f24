//! `wasmhttp image push` and `pull`: an OCI layout tar to and from a registry, through `oci-client`.
//! Plain HTTP only when asked; credentials from the Docker `config.json`; every failure one line that names
//! the registry, and a pull writes nothing until every blob has been fetched and checked. What the registry
//! sends is bounded: manifests by [`MAX_MANIFEST_SIZE`], blobs by what their manifest declares and
//! `--max-size`.

use super::layout::{self, Descriptor, Image};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use wasmhttp_oci::{Document, choose_entry};

/// How to reach the registry.
#[derive(Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP instead of HTTPS (a loopback or lab registry).
    #[arg(long, visible_alias = "insecure")]
    plain_http: bool,
    /// Give up on a registry that accepts no connection, or sends nothing, for this long (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = wasmhttp_runtime::knobs::value::duration::parse)]
    timeout: Duration,
}

#[derive(Args)]
pub struct PushArgs {
    /// The image layout tar (from `wasmhttp image build` or `pull`).
    image: PathBuf,
    /// Where to push it, e.g. localhost:5000/hello:v1.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct PullArgs {
    /// The image to pull, e.g. localhost:5000/hello:v1.
    reference: String,
    /// Output tar (an OCI image layout, for `ctr image import`).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Refuse an image whose manifest declares more than this many bytes of config and layers, before
    /// pulling any of them (they are held in memory until written; e.g. 512Mi, 4Gi).
    #[arg(long, value_name = "SIZE", default_value = "1Gi",
          value_parser = wasmhttp_runtime::knobs::value::size::parse)]
    max_size: u64,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Chunk size of blob uploads: the progress bar moves per chunk.
const CHUNK: usize = 1 << 20;

pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let image = layout::read(&args.image)?;
    let mut session = Session::new(&reference, &args.registry)?;
    block_on(async {
        session.authenticate(RegistryOperation::Push).await?;
        let total = image.descriptors().map(|d| d.size).sum();
        let progress = progress_bar(total, "push");
        for d in image.descriptors() {
            let exists = session.client.blob_exists(&reference, &d.digest).await;
            if exists.map_err(|e| session.explain(e))? {
                progress.inc(d.size);
                continue;
            }
            let bytes = Bytes::from(image.blobs[&d.digest].clone());
            let chunks: Vec<_> = (0..bytes.len())
                .step_by(CHUNK)
                .map(|at| bytes.slice(at..bytes.len().min(at + CHUNK)))
                .collect();
            let bar = progress.clone();
            let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
                bar.inc(chunk.len() as u64);
                Ok(chunk)
            }));
            session
                .client
                .push_blob_stream(&reference, stream, &d.digest, Some(d.size))
                .await
                .map_err(|e| session.explain(e))
                .with_context(|| format!("pushing blob {}", d.digest))?;
        }
        let content_type = image.manifest_type.parse()?;
        session
            .client
            .push_manifest_raw(&reference, image.manifest.bytes.clone(), content_type)
            .await
            .map_err(|e| session.explain(e))
            .context("pushing the manifest")?;
        progress.finish_and_clear();
        eprintln!(
            "wasmhttp: pushed {}@{}",
            args.reference, image.manifest.digest
        );
        Ok(())
    })
}

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let mut session = Session::new(&reference, &args.registry)?;
    let image = block_on(async {
        session.authenticate(RegistryOperation::Pull).await?;
        let manifest = session.manifest(&reference).await?;
        let (_, config, layers) = layout::parse_manifest(&manifest)?;
        let wanted: Vec<&Descriptor> = std::iter::once(&config).chain(&layers).collect();
        // Summed without overflow: the sizes are the registry's word.
        let total = wanted
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.size));
        if total > args.max_size {
            bail!(
                "{} declares {total} bytes of config and layers, more than --max-size allows ({} bytes)",
                args.reference,
                args.max_size
            );
        }
        let progress = progress_bar(total, "pull");
        let mut blobs = HashMap::new();
        for d in wanted {
            let mut out = ProgressWriter {
                // Sized by what arrives: the descriptor's size is the registry's word.
                bytes: Vec::with_capacity(d.size.min(PREALLOCATED_AT_MOST) as usize),
                declared: d.size,
                progress: progress.clone(),
            };
            session
                .client
                .pull_blob(&reference, &oci_descriptor(d), &mut out)
                .await
                .map_err(|e| session.explain(e))
                .with_context(|| format!("pulling blob {} ({})", d.digest, d.media_type))?;
            blobs.insert(d.digest.clone(), out.bytes);
        }
        progress.finish_and_clear();
        Image::new(manifest, blobs).with_context(|| args.reference.clone())
    })?;
    layout::write(&args.output, &args.reference, &image)?;
    eprintln!(
        "wasmhttp: pulled {}@{} to {}",
        args.reference,
        image.manifest.digest,
        args.output.display()
    );
    Ok(())
}

fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    text.parse::<Reference>()
        .map_err(|e| anyhow!("invalid image reference {text:?}: {e}"))
}

fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// The largest manifest or index a pull takes: the size registries commonly accept for one. Without a bound
/// a registry could make the command hold whatever it sends before any check.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A client bound to one registry, with the credentials found for it.
struct Session {
    client: Client,
    /// Manifests are fetched with this client rather than `client`, which reads a manifest whole however
    /// large it is.
    http: reqwest::Client,
    scheme: &'static str,
    reference: Reference,
    auth: RegistryAuth,
    /// The bearer token [`Session::authenticate`] obtained, if the registry asked for one.
    token: Option<String>,
    registry: String,
    timeout: Duration,
}

impl Session {
    fn new(reference: &Reference, args: &RegistryArgs) -> anyhow::Result<Self> {
        let (protocol, scheme) = if args.plain_http {
            (ClientProtocol::Http, "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let registry = reference.resolve_registry().to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(args.timeout)
            .read_timeout(args.timeout)
            .user_agent(concat!("wasmhttp/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Session {
            http,
            scheme,
            token: None,
            client: Client::new(ClientConfig {
                protocol,
                // Without them a registry that stalls holds the command forever.
                connect_timeout: Some(args.timeout),
                read_timeout: Some(args.timeout),
                ..Default::default()
            }),
            reference: reference.clone(),
            auth: super::credentials::for_registry(&registry)?,
            registry,
            timeout: args.timeout,
        })
    }

    async fn authenticate(&mut self, operation: RegistryOperation) -> anyhow::Result<()> {
        self.token = self
            .client
            .auth(&self.reference, &self.auth, operation)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(())
    }

    /// The image manifest's bytes; an index is resolved to the entry for wasm or this host.
    async fn manifest(&self, reference: &Reference) -> anyhow::Result<Vec<u8>> {
        let accepted = wasmhttp_oci::MANIFEST_TYPES;
        let bytes = self.fetch_manifest(reference, &accepted).await?;
        let index =
            match Document::parse(&bytes).map_err(|e| anyhow!("the registry's manifest is {e}"))? {
                Document::Index(index) => index,
                Document::Manifest(_) => return Ok(bytes),
            };
        let digest = choose_entry(&index)
            .with_context(|| format!("{} is an empty index", self.reference))?
            .digest()
            .to_string();
        let digest = digest.as_str();
        let by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        );
        self.fetch_manifest(&by_digest, &accepted[..2]).await
    }

    /// The bytes of the manifest `reference` names, no more than [`MAX_MANIFEST_SIZE`] of them, checked
    /// against the digest the reference or the registry gives.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        accepted: &[&str],
    ) -> anyhow::Result<Vec<u8>> {
        let registry = &self.registry;
        let url = format!(
            "{}://{registry}/v2/{}/manifests/{}",
            self.scheme,
            reference.repository(),
            reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest"))
        );
        let request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, accepted.join(", "));
        let request = match (&self.token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let request_failed = |e| self.explain(OciDistributionError::RequestError(e));
        let mut response = request.send().await.map_err(request_failed)?;
        let status = response.status();
        match status.as_u16() {
            200 => {}
            code @ (401 | 403) => {
                return Err(self.explain(OciDistributionError::ServerError {
                    code,
                    url,
                    message: String::new(),
                }));
            }
            404 => bail!("{} not found in registry {registry}", self.reference),
            _ => bail!("registry {registry} answered {status} for the manifest of {reference}"),
        }
        let too_large = || {
            anyhow!(
                "registry {registry} sent a manifest for {reference} larger than {MAX_MANIFEST_SIZE} bytes, \
                 the most a pull takes"
            )
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_SIZE)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
            if (bytes.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        // A digest in the reference is the user's word and always checked; the registry's header only when
        // it is one this command computes.
        let expected = reference
            .digest()
            .or(header.filter(|h| h.starts_with("sha256:")));
        if let Some(expected) = expected
            && layout::digest_of(&bytes) != expected
        {
            bail!(
                "digest mismatch: registry {registry} sent a manifest for {reference} that does not match \
                 its digest {expected}"
            );
        }
        Ok(bytes)
    }

    /// One line that says what went wrong with which registry.
    fn explain(&self, error: OciDistributionError) -> anyhow::Error {
        let registry = &self.registry;
        let denied = |code: u16| {
            anyhow!(
                "registry {registry} answered {code} {}: {}",
                if code == 401 {
                    "Unauthorized"
                } else {
                    "Forbidden"
                },
                super::credentials::hint(registry)
            )
        };
        match error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => denied(401),
            OciDistributionError::ServerError { code, .. } if code == 401 || code == 403 => {
                denied(code)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                match envelope.errors.first().map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized) => denied(401),
                    Some(OciErrorCode::Denied) => denied(403),
                    Some(OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown) => {
                        anyhow!("{} not found in registry {registry}", self.reference)
                    }
                    _ => anyhow!(
                        "registry {registry} refused: {}",
                        envelope
                            .errors
                            .iter()
                            .map(|e| format!("{:?}: {}", e.code, e.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                anyhow!("{} not found in registry {registry}", self.reference)
            }
            OciDistributionError::DigestError(e) => {
                anyhow!(
                    "digest mismatch: registry {registry} sent content that does not match its digest ({e})"
                )
            }
            OciDistributionError::RequestError(e) if e.is_timeout() => anyhow!(
                "cannot reach registry {registry}: {} (no answer within --timeout {}s)",
                root_cause(&e),
                self.timeout.as_secs_f64()
            ),
            OciDistributionError::RequestError(e) if e.is_connect() => {
                anyhow!("cannot reach registry {registry}: {}", root_cause(&e))
            }
            other => anyhow!("registry {registry}: {}", root_cause(&other)),
        }
    }
}

/// The innermost error's message: reqwest's outer ones only say "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(inner) = source {
        messages.push(inner.to_string());
        source = inner.source();
    }
    messages.dedup();
    messages.join(": ")
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    }
}

fn progress_bar(total: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{verb} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// The most a blob's buffer is sized for before its bytes arrive.
const PREALLOCATED_AT_MOST: u64 = 16 << 20;

/// Collects a blob, no more of it than its descriptor declares, and moves the progress bar as bytes arrive.
struct ProgressWriter {
    bytes: Vec<u8>,
    declared: u64,
    progress: ProgressBar,
}

impl tokio::io::AsyncWrite for ProgressWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // A registry that sends more than the manifest declares is refused at once rather than held (its
        // digest would not match either, but only once all of it had been taken).
        if self.bytes.len() as u64 + buf.len() as u64 > self.declared {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the registry sent more than the {} bytes the manifest declares",
                    self.declared
                ),
            )));
        }
        self.bytes.extend_from_slice(buf);
        self.progress.inc(buf.len() as u64);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
