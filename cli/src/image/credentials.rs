//! Registry credentials from Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`), read by the `docker_credential` crate: per-registry `credHelpers`, `auths`
//! entries (`auth` or `username`/`password`), then the `credsStore` helper — the order Docker itself uses.
//! No file, or nothing for the registry, means anonymous access.

use anyhow::{Context, bail};
use docker_credential::{CredentialRetrievalError, DockerCredential};
use std::path::PathBuf;

/// The user's credentials for one registry.
pub enum Credentials {
    /// None found: requests go without.
    Anonymous,
    /// A user name and a password (or access token), sent as HTTP Basic or to the registry's token service.
    Basic(String, String),
}

/// Names the user, never the password: a debug print must not leak it.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic(user, _) => write!(f, "Basic({user:?}, <password>)"),
        }
    }
}

/// Where the Docker config is looked for.
pub fn config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
        }
    }
}

/// What to tell a user whose registry refused them.
pub fn hint(registry: &str) -> String {
    match config_path() {
        Some(path) if path.exists() => format!(
            "check the credentials for {registry} in {} (auths.\"{registry}\")",
            path.display()
        ),
        Some(path) => format!(
            "no credentials: {} does not exist (`docker login {registry}` writes it)",
            path.display()
        ),
        None => "no credentials: set DOCKER_CONFIG or HOME".into(),
    }
}

/// The credentials for `registry` (host[:port]).
pub fn for_registry(registry: &str) -> anyhow::Result<Credentials> {
    let Some(path) = config_path().filter(|p| p.exists()) else {
        return Ok(Credentials::Anonymous);
    };
    let file =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    from_reader(std::io::BufReader::new(file), registry).with_context(|| path.display().to_string())
}

fn from_reader(reader: impl std::io::Read, registry: &str) -> anyhow::Result<Credentials> {
    match docker_credential::get_credential_from_reader(reader, registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(Credentials::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(_)) => bail!(
            "the credentials for {registry} are an identity token (an OAuth refresh token), which \
             wasmhttp cannot use: log in with a username and password or an access token"
        ),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(Credentials::Anonymous),
        Err(CredentialRetrievalError::ConfigReadError) => bail!("not a Docker config.json"),
        Err(CredentialRetrievalError::CredentialDecodingError) => {
            bail!("the auths entry for {registry} is not base64 of user:password")
        }
        Err(e) => Err(anyhow::anyhow!("credentials for {registry}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(config: &serde_json::Value, registry: &str) -> anyhow::Result<Credentials> {
        from_reader(config.to_string().as_bytes(), registry)
    }

    fn basic(config: &serde_json::Value, registry: &str) -> Option<(String, String)> {
        match auth(config, registry).unwrap() {
            Credentials::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    #[test]
    fn auth_entries_are_matched_by_host_and_decoded() {
        let config = serde_json::json!({ "auths": {
            "http://127.0.0.1:5000": { "auth": "dXNlcjpwYXNz" },
            "https://index.docker.io/v1/": { "username": "u", "password": "p" },
            "bad:1": { "auth": "!!" },
        }});
        assert_eq!(
            basic(&config, "127.0.0.1:5000"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(basic(&config, "docker.io"), Some(("u".into(), "p".into())));
        assert_eq!(basic(&config, "other:1"), None);
        let err = auth(&config, "bad:1").unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
    }
}
