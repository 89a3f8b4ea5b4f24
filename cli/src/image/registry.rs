//! `wasmhttp image push` (through oci-client) and what it shares with `pull` (`pull.rs`): the registry
//! options, a session bound to one registry, and its errors. Plain HTTP only when asked; credentials from
//! the Docker `config.json`; every failure one line that names the registry.

use super::layout;
use anyhow::{Context, anyhow};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::path::PathBuf;
use std::time::Duration;

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

/// Chunk size of blob uploads: the progress bar moves per chunk.
const CHUNK: usize = 1 << 20;

pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let image = layout::read(&args.image)?;
    let session = Session::new(&reference, &args.registry)?;
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

pub(super) fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    text.parse::<Reference>()
        .map_err(|e| anyhow!("invalid image reference {text:?}: {e}"))
}

pub(super) fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// A client bound to one registry, with the credentials found for it.
pub(super) struct Session {
    /// oci-client, for pushes.
    client: Client,
    /// For pulls (`pull.rs`), which bound what they read.
    pub(super) http: reqwest::Client,
    pub(super) scheme: &'static str,
    pub(super) reference: Reference,
    pub(super) auth: RegistryAuth,
    pub(super) registry: String,
    timeout: Duration,
}

impl Session {
    pub(super) fn new(reference: &Reference, args: &RegistryArgs) -> anyhow::Result<Self> {
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

    async fn authenticate(&self, operation: RegistryOperation) -> anyhow::Result<()> {
        self.client
            .auth(&self.reference, &self.auth, operation)
            .await
            .map(drop)
            .map_err(|e| self.explain(e))
    }

    /// One line that says what went wrong with which registry.
    pub(super) fn explain(&self, error: OciDistributionError) -> anyhow::Error {
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

pub(super) fn progress_bar(total: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{verb} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
    )) {
        bar.set_style(style);
    }
    bar
}
