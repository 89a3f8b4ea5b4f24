//! `wasmhttp image pull`: an image from a registry into an OCI layout tar, spoken to the registry directly
//! (`client.rs`). Everything the registry sends is read with a bound: a manifest by [`MAX_MANIFEST_SIZE`],
//! a blob by what its manifest declares and `--max-size` (a token and an error's body by the client's).
//! Nothing is written until every blob has been fetched and checked.

use super::client::{Authorized, read_bounded, successful};
use super::layout::{self, Descriptor, Image};
use super::registry::{RegistryArgs, Session, block_on, parse_reference, progress_bar};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use oci_spec::distribution::Reference;
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::path::PathBuf;
use wasmhttp_oci::{Document, choose_entry};

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

/// The largest manifest or index a pull takes: the size registries commonly accept for one.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let session = Session::new(&reference, &args.registry)?;
    let image = block_on(async {
        let puller = Puller(Authorized::new(&session, "pull").await?);
        let manifest = puller.manifest(&reference).await?;
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
            let bytes = puller
                .blob(d, |n| progress.inc(n))
                .await
                .with_context(|| format!("pulling blob {} ({})", d.digest, d.media_type))?;
            blobs.insert(d.digest.clone(), bytes);
        }
        progress.finish_and_clear();
        // Checks every blob's digest and size, and that the image holds wasm.
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

/// A session that may read from the repository.
struct Puller<'a>(Authorized<'a>);

impl Puller<'_> {
    /// `GET url`, accepting the `accept` media types if given.
    async fn get(&self, url: &str, accept: Option<String>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.0.request(Method::GET, url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        self.0.session.send(request).await
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
            .with_context(|| format!("{} is an empty index", self.0.session.reference))?
            .digest()
            .to_string();
        let by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest,
        );
        self.fetch_manifest(&by_digest, &accepted[..2]).await
    }

    /// The bytes of the manifest `reference` names, checked against the digest the reference or the
    /// registry gives.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        accepted: &[&str],
    ) -> anyhow::Result<Vec<u8>> {
        let session = self.0.session;
        let registry = &session.registry;
        let url = self.0.manifest_url(reference);
        let response = self.get(&url, Some(accepted.join(", "))).await?;
        if response.status() == StatusCode::NOT_FOUND {
            bail!("{} not found in registry {registry}", session.reference);
        }
        let response = successful(session, response, "the manifest").await?;
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let too_large = || {
            anyhow!(
                "registry {registry} sent a manifest for {reference} larger than {MAX_MANIFEST_SIZE} bytes, \
                 the most a pull takes"
            )
        };
        let bytes = read_bounded(session, response, MAX_MANIFEST_SIZE, too_large, |_| {}).await?;
        // A digest in the reference is the user's word and always checked; the registry's header only when
        // it is one this command computes.
        let expected = reference
            .digest()
            .map(str::to_owned)
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

    /// The blob `d` describes, no longer than it declares; `progress` is told of each part as it arrives.
    async fn blob(&self, d: &Descriptor, progress: impl FnMut(u64)) -> anyhow::Result<Vec<u8>> {
        let session = self.0.session;
        let response = self
            .get(&self.0.url(&format!("blobs/{}", d.digest)), None)
            .await?;
        let what = format!("blob {}", d.digest);
        let response = successful(session, response, &what).await?;
        let too_large = || {
            anyhow!(
                "the registry sent more than the {} bytes the manifest declares",
                d.size
            )
        };
        read_bounded(session, response, d.size, too_large, progress).await
    }
}
