//! What `push` and `pull` share: the registry options and a session bound to one registry, with the
//! user's credentials for it and the one-line errors every failure becomes. Plain HTTP only when asked;
//! credentials from the Docker `config.json`; every error names the registry.

use super::credentials::Credentials;
use anyhow::{Context, anyhow};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oci_spec::distribution::Reference;
use reqwest::StatusCode;
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
    pub(super) http: reqwest::Client,
    /// `SCHEME://REGISTRY/`: what every URL of the registry is built on, and the one origin that gets the
    /// user's credentials.
    pub(super) origin: reqwest::Url,
    pub(super) reference: Reference,
    pub(super) auth: Credentials,
    pub(super) registry: String,
    timeout: Duration,
}

impl Session {
    pub(super) fn new(reference: &Reference, args: &RegistryArgs) -> anyhow::Result<Self> {
        let scheme = if args.plain_http { "http" } else { "https" };
        let registry = reference.resolve_registry().to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(args.timeout)
            .read_timeout(args.timeout)
            .user_agent(concat!("wasmhttp/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTP client")?;
        let origin = reqwest::Url::parse(&format!("{scheme}://{registry}/"))
            .with_context(|| format!("registry {registry:?} is no host[:port]"))?;
        Ok(Session {
            http,
            origin,
            reference: reference.clone(),
            auth: super::credentials::for_registry(&registry)?,
            registry,
            timeout: args.timeout,
        })
    }

    /// The registry refused the credentials (401) or what they allow (403).
    pub(super) fn denied(&self, status: StatusCode) -> anyhow::Error {
        let registry = &self.registry;
        anyhow!(
            "registry {registry} answered {status}: {}",
            super::credentials::hint(registry)
        )
    }

    /// Sends `request`; a registry that cannot be reached or does not answer is one line naming it.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|e| self.unreachable(e))
    }

    /// A request that got no answer.
    pub(super) fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let registry = &self.registry;
        if error.is_timeout() {
            anyhow!(
                "cannot reach registry {registry}: {} (no answer within --timeout {}s)",
                root_cause(&error),
                self.timeout.as_secs_f64()
            )
        } else if error.is_connect() {
            anyhow!("cannot reach registry {registry}: {}", root_cause(&error))
        } else {
            anyhow!("registry {registry}: {}", root_cause(&error))
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
