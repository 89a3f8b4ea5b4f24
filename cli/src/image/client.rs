//! The registry protocol `push` and `pull` speak, over reqwest, reading every answer with a bound (a client
//! that reads tokens, manifests and error bodies whole holds whatever a registry sends): authentication
//! (the token service a registry names, else the user's Basic credentials), requests carrying it, sent to
//! the registry's own host only, and bounded reads. An error's body is read up to [`MAX_ERROR_SIZE`] for
//! the registry's own words, and no further.

use super::credentials::Credentials;
use super::registry::Session;
use anyhow::{Context, anyhow};
use oci_spec::distribution::Reference;
use reqwest::{Method, RequestBuilder, Response};

/// The largest answer of a registry's token service taken: a token is a few kilobytes.
const MAX_TOKEN_SIZE: u64 = 1 << 20;
/// How much of an error's body is read for the registry's reason.
const MAX_ERROR_SIZE: u64 = 16 << 10;
/// The most a body's buffer is sized for before its bytes arrive.
const PREALLOCATED_AT_MOST: u64 = 16 << 20;

/// A session that may act on the repository: with the token the registry's token service gave, else with
/// the user's credentials for the registry, if any.
pub(super) struct Authorized<'a> {
    pub(super) session: &'a Session,
    token: Option<String>,
}

impl<'a> Authorized<'a> {
    /// Asks the registry how to authenticate (`GET /v2/`) and, when it names a token service, gets a token
    /// for `actions` (`pull`, `pull,push`) on the repository, with the user's credentials if there are any.
    pub(super) async fn new(session: &'a Session, actions: &str) -> anyhow::Result<Authorized<'a>> {
        let ping = session.origin.join("v2/")?;
        let response = session.send(session.http.get(ping)).await?;
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge);
        let Some(challenge) = challenge else {
            return Ok(Authorized {
                session,
                token: None,
            });
        };
        let scope = format!("repository:{}:{actions}", session.reference.repository());
        let mut url = reqwest::Url::parse(&challenge.realm).with_context(|| {
            format!(
                "registry {} names a token service that is no URL: {:?}",
                session.registry, challenge.realm
            )
        })?;
        url.query_pairs_mut().append_pair("scope", &scope);
        if let Some(service) = &challenge.service {
            url.query_pairs_mut().append_pair("service", service);
        }
        let response = session
            .send(with_basic_auth(session, session.http.get(url)))
            .await?;
        let what = format!("a token (from {})", challenge.realm);
        let response = successful(session, response, &what).await?;
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
        Ok(Authorized {
            session,
            token: Some(token.to_string()),
        })
    }

    /// The URL of `path` under the repository's API (`/v2/NAME/PATH`).
    pub(super) fn url(&self, path: &str) -> String {
        let repository = self.session.reference.repository();
        format!("{}v2/{repository}/{path}", self.session.origin)
    }

    /// The URL of the manifest `reference` names in the repository: by its digest, else its tag
    /// (`latest` when it has neither).
    pub(super) fn manifest_url(&self, reference: &Reference) -> String {
        let target = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        self.url(&format!("manifests/{target}"))
    }

    /// A request for `url` with this session's credentials: the token as `Bearer`, else the user's Basic
    /// credentials, else none. A URL the registry gave (an upload's location) may name another host: it
    /// gets no credentials, as a browser sends none across origins.
    pub(super) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.session.http.request(method, url);
        if !self.is_registry(url) {
            return request;
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => with_basic_auth(self.session, request),
        }
    }

    /// Whether `url` is on the registry itself: its scheme, host and port.
    fn is_registry(&self, url: &str) -> bool {
        reqwest::Url::parse(url).is_ok_and(|url| url.origin() == self.session.origin.origin())
    }
}

/// `response` if it succeeded (2xx: registries answer writes with 201 or 202); else one line naming the
/// status, with the registry's reason when the first [`MAX_ERROR_SIZE`] bytes of its body hold one.
pub(super) async fn successful(
    session: &Session,
    response: Response,
    what: &str,
) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if matches!(status.as_u16(), 401 | 403) {
        return Err(session.denied(status));
    }
    let reason = read_bounded(session, response, MAX_ERROR_SIZE, || anyhow!(""), |_| {})
        .await
        .ok()
        .and_then(|body| registry_reason(&body))
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default();
    Err(anyhow!(
        "registry {} answered {status} for {what}{reason}",
        session.registry
    ))
}

/// The codes and messages of a distribution error body (`{"errors":[{"code":…,"message":…}]}`).
fn registry_reason(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let reasons: Vec<String> = value["errors"]
        .as_array()?
        .iter()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or("UNKNOWN").escape_debug();
            match e["message"].as_str() {
                Some(message) => format!("{code}: {}", message.escape_debug()),
                None => code.to_string(),
            }
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The body of `response`, refused with `too_large` once it is longer than `max` (at once when it says so).
pub(super) async fn read_bounded(
    session: &Session,
    mut response: Response,
    max: u64,
    too_large: impl Fn() -> anyhow::Error,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // Sized by what arrives: a declared size is the registry's word.
    let mut bytes = Vec::with_capacity(max.min(PREALLOCATED_AT_MOST) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| session.unreachable(e))? {
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
        Credentials::Basic(user, password) => request.basic_auth(user, Some(password)),
        Credentials::Anonymous => request,
    }
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

    #[test]
    fn a_registrys_reason_is_its_error_codes_and_messages_and_nothing_else() {
        let body = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}},{"code":"BLOB_UNKNOWN"}]}"#;
        assert_eq!(
            registry_reason(body).as_deref(),
            Some("MANIFEST_INVALID: manifest invalid; BLOB_UNKNOWN")
        );
        assert_eq!(
            registry_reason(br#"{"errors":[{"code":"X","message":"a\nb"}]}"#).as_deref(),
            Some("X: a\\nb")
        );
        assert_eq!(registry_reason(b"<html>Bad Gateway</html>"), None);
        assert_eq!(registry_reason(br#"{"errors":[]}"#), None);
    }
}
