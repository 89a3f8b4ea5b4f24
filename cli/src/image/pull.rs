//! `wasmhttp image pull`: an image from a registry into an OCI layout tar, spoken to the registry directly
//! (reqwest) rather than through oci-client, which reads tokens, manifests and error bodies whole however
//! large they are. Everything the registry sends is read with a bound: a token by [`MAX_TOKEN_SIZE`], a
//! manifest by [`MAX_MANIFEST_SIZE`], a blob by what its manifest declares and `--max-size`; an error's body
//! is not read at all. Nothing is written until every blob has been fetched and checked.

use super::layout::{self, Descriptor, Image};
use super::registry::{RegistryArgs, Session, block_on, parse_reference, progress_bar};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use reqwest::RequestBuilder;
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
/// The largest answer of a registry's token service a pull takes: a token is a few kilobytes.
const MAX_TOKEN_SIZE: u64 = 1 << 20;
/// The most a blob's buffer is sized for before its bytes arrive.
const PREALLOCATED_AT_MOST: u64 = 16 << 20;

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let session = Session::new(&reference, &args.registry)?;
    let image = block_on(async {
        let puller = Puller::authenticate(&session).await?;
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
                .blob(&reference, d, |n| progress.inc(n))
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

/// A session that may read from the repository: with the token the registry's token service gave, else
/// with the user's credentials for the registry, if any.
struct Puller<'a> {
    session: &'a Session,
    token: Option<String>,
}

impl<'a> Puller<'a> {
    /// Asks the registry how to authenticate (`GET /v2/`) and, when it names a token service, gets a token
    /// for pulling from the repository, with the user's credentials if there are any.
    async fn authenticate(session: &'a Session) -> anyhow::Result<Puller<'a>> {
        let ping = format!("{}://{}/v2/", session.scheme, session.registry);
        let response = session
            .http
            .get(&ping)
            .send()
            .await
            .map_err(|e| failed(session, e))?;
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge);
        let Some(challenge) = challenge else {
            return Ok(Puller {
                session,
                token: None,
            });
        };
        let scope = format!("repository:{}:pull", session.reference.repository());
        let mut request = session
            .http
            .get(&challenge.realm)
            .query(&[("scope", &scope)]);
        if let Some(service) = &challenge.service {
            request = request.query(&[("service", service)]);
        }
        let response = with_basic_auth(session, request)
            .send()
            .await
            .map_err(|e| failed(session, e))?;
        let what = format!("a token (from {})", challenge.realm);
        let response = check_status(session, response, &what)?;
        let too_large = || {
            anyhow!(
                "registry {}'s token service sent more than {MAX_TOKEN_SIZE} bytes",
                session.registry
            )
        };
        let body = read_bounded(session, response, MAX_TOKEN_SIZE, too_large, |_| {}).await?;
        let answer: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
            format!("registry {}'s token service sent no JSON", session.registry)
        })?;
        let token = answer["token"]
            .as_str()
            .or(answer["access_token"].as_str())
            .with_context(|| {
                format!(
                    "registry {}'s token service sent no token",
                    session.registry
                )
            })?;
        Ok(Puller {
            session,
            token: Some(token.to_string()),
        })
    }

    /// `GET url` with this session's credentials.
    async fn get(&self, url: &str, accept: Option<String>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.session.http.get(url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => with_basic_auth(self.session, request),
        };
        request.send().await.map_err(|e| failed(self.session, e))
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
            .with_context(|| format!("{} is an empty index", self.session.reference))?
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
        let registry = &self.session.registry;
        let url = format!(
            "{}://{registry}/v2/{}/manifests/{}",
            self.session.scheme,
            reference.repository(),
            reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest"))
        );
        let response = self.get(&url, Some(accepted.join(", "))).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            bail!(
                "{} not found in registry {registry}",
                self.session.reference
            );
        }
        let response = check_status(self.session, response, "the manifest")?;
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
        let bytes =
            read_bounded(self.session, response, MAX_MANIFEST_SIZE, too_large, |_| {}).await?;
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
    async fn blob(
        &self,
        reference: &Reference,
        d: &Descriptor,
        progress: impl FnMut(u64),
    ) -> anyhow::Result<Vec<u8>> {
        let url = format!(
            "{}://{}/v2/{}/blobs/{}",
            self.session.scheme,
            self.session.registry,
            reference.repository(),
            d.digest
        );
        let response = self.get(&url, None).await?;
        let response = check_status(self.session, response, &format!("blob {}", d.digest))?;
        let too_large = || {
            anyhow!(
                "the registry sent more than the {} bytes the manifest declares",
                d.size
            )
        };
        read_bounded(self.session, response, d.size, too_large, progress).await
    }
}

/// `response` if it is a 200; else one line naming the status (its body, the registry's word of any size,
/// is not read).
fn check_status(
    session: &Session,
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    match status.as_u16() {
        200 => Ok(response),
        code @ (401 | 403) => Err(session.explain(OciDistributionError::ServerError {
            code,
            url: response.url().to_string(),
            message: String::new(),
        })),
        _ => Err(anyhow!(
            "registry {} answered {status} for {what}",
            session.registry
        )),
    }
}

/// The body of `response`, refused with `too_large` once it is longer than `max` (at once when it says so).
async fn read_bounded(
    session: &Session,
    mut response: reqwest::Response,
    max: u64,
    too_large: impl Fn() -> anyhow::Error,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // Sized by what arrives: a declared size is the registry's word.
    let mut bytes = Vec::with_capacity(max.min(PREALLOCATED_AT_MOST) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(session, e))? {
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
        progress(chunk.len() as u64);
    }
    Ok(bytes)
}

/// `request` with the user's Basic credentials for the registry, when `config.json` has some.
fn with_basic_auth(session: &Session, request: RequestBuilder) -> RequestBuilder {
    match &session.auth {
        RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
        _ => request,
    }
}

/// A request that got no answer, in the words [`Session::explain`] uses for every registry error.
fn failed(session: &Session, error: reqwest::Error) -> anyhow::Error {
    session.explain(OciDistributionError::RequestError(error))
}

/// Where a registry's `WWW-Authenticate: Bearer …` challenge sends a client for a token.
#[derive(Debug, PartialEq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// The realm and service of a Bearer challenge; `None` for another scheme or a challenge without a realm.
fn bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.trim().to_string()),
            "service" => service = Some(value.trim().to_string()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',');
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_quoted_or_not_and_other_schemes_are_not() {
        let docker_hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/hello:pull""#;
        assert_eq!(
            bearer_challenge(docker_hub),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            bearer_challenge("bearer service=ghcr.io, realm=https://ghcr.io/token"),
            Some(BearerChallenge {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
            })
        );
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#), None);
        assert_eq!(bearer_challenge(r#"Bearer service="no realm""#), None);
        assert_eq!(bearer_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
