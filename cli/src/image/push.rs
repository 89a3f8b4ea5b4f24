//! `wasmhttp image push`: an OCI layout tar into a registry, spoken to it directly (`client.rs`). Blobs the
//! repository already has are skipped; each other one is uploaded whole (a `POST` to open the upload, one
//! `PUT` with its bytes and digest), then the manifest is put under the reference's tag or digest.

use super::client::{Authorized, successful};
use super::layout::{self, Descriptor};
use super::registry::{RegistryArgs, Session, block_on, parse_reference, progress_bar};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use clap::Args;
use indicatif::ProgressBar;
use reqwest::{Method, StatusCode, header};
use std::path::PathBuf;

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
    let mut image = layout::read(&args.image)?;
    // Each blob's bytes move out of the image as it is uploaded, so none is held twice.
    let descriptors: Vec<Descriptor> = image.descriptors().cloned().collect();
    let session = Session::new(&reference, &args.registry)?;
    block_on(async {
        let registry = Authorized::new(&session, "pull,push").await?;
        let total = descriptors.iter().map(|d| d.size).sum();
        let progress = progress_bar(total, "push");
        for d in &descriptors {
            // Gone from the image: a blob the manifest names twice, uploaded already by this push.
            let Some(bytes) = image.blobs.remove(&d.digest) else {
                progress.inc(d.size);
                continue;
            };
            if has_blob(&registry, d).await? {
                progress.inc(d.size);
                continue;
            }
            upload(&registry, d, Bytes::from(bytes), &progress)
                .await
                .with_context(|| format!("pushing blob {}", d.digest))?;
        }
        let put = registry
            .request(Method::PUT, &registry.manifest_url(&reference))
            .header(header::CONTENT_TYPE, &image.manifest_type)
            .body(image.manifest.bytes.clone());
        let answer = registry.session.send(put).await?;
        successful(&session, answer, "the manifest")
            .await
            .context("pushing the manifest")?;
        progress.finish_and_clear();
        eprintln!(
            "wasmhttp: pushed {}@{}",
            args.reference, image.manifest.digest
        );
        Ok(())
    })
}

/// Whether the repository holds the blob `d` describes (`HEAD`): 200 yes, 404 no, anything else an error.
async fn has_blob(registry: &Authorized<'_>, d: &Descriptor) -> anyhow::Result<bool> {
    let head = registry.request(Method::HEAD, &registry.url(&format!("blobs/{}", d.digest)));
    let answer = registry.session.send(head).await?;
    if answer.status() == StatusCode::NOT_FOUND {
        return Ok(false);
    }
    let what = format!("blob {}", d.digest);
    successful(registry.session, answer, &what).await?;
    Ok(true)
}

/// Uploads `bytes` as the blob `d` describes: opens an upload, then puts them all with their digest.
async fn upload(
    registry: &Authorized<'_>,
    d: &Descriptor,
    bytes: Bytes,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let session = registry.session;
    let open = registry.request(Method::POST, &registry.url("blobs/uploads/"));
    let answer = registry.session.send(open).await?;
    let answer = successful(session, answer, "a new upload").await?;
    let location = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            anyhow!(
                "registry {} opened an upload without saying where (no Location header)",
                session.registry
            )
        })?;
    // The location may be absolute or a path on the registry, and may carry a query of its own.
    let mut url = session.origin.join(location).with_context(|| {
        format!(
            "registry {} gave an upload location that is no URL: {location:?}",
            session.registry
        )
    })?;
    url.query_pairs_mut().append_pair("digest", &d.digest);
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(CHUNK)
        .map(|at| bytes.slice(at..bytes.len().min(at + CHUNK)))
        .collect();
    let bar = progress.clone();
    let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
        bar.inc(chunk.len() as u64);
        Ok::<_, std::io::Error>(chunk)
    }));
    let put = registry
        .request(Method::PUT, url.as_str())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(reqwest::Body::wrap_stream(stream));
    let answer = registry.session.send(put).await?;
    successful(session, answer, "the upload").await?;
    Ok(())
}
