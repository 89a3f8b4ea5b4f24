//! Registry credentials from the Docker `config.json` format (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): the `auths` entry for the registry, as `auth` (base64 `user:password`) or
//! `username`/`password`. No entry means anonymous access.

use anyhow::{Context, bail};
use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use std::path::PathBuf;

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
pub fn for_registry(registry: &str) -> anyhow::Result<RegistryAuth> {
    let Some(path) = config_path().filter(|p| p.exists()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    from_config(&config, registry).with_context(|| path.display().to_string())
}

fn from_config(config: &Value, registry: &str) -> anyhow::Result<RegistryAuth> {
    let Some(auths) = config["auths"].as_object() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let Some((key, entry)) = auths
        .iter()
        .find(|(key, _)| host_of(key) == host_of(registry))
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(encoded) = entry["auth"].as_str().filter(|s| !s.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            bail!("auths.\"{key}\".auth is not base64 of user:password");
        };
        return Ok(RegistryAuth::Basic(user.into(), password.into()));
    }
    match (entry["username"].as_str(), entry["password"].as_str()) {
        (Some(user), Some(password)) => Ok(RegistryAuth::Basic(user.into(), password.into())),
        _ => Ok(RegistryAuth::Anonymous),
    }
}

/// `https://index.docker.io/v1/` and `docker.io` name the same registry; so do `http://h:5000` and `h:5000`.
fn host_of(key: &str) -> &str {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn auth_entries_are_matched_by_host_and_decoded() {
        let config = json!({ "auths": {
            "http://127.0.0.1:5000": { "auth": "dXNlcjpwYXNz" },
            "https://index.docker.io/v1/": { "username": "u", "password": "p" },
            "bad:1": { "auth": "!!" },
        }});
        let basic = |registry: &str| match from_config(&config, registry).unwrap() {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        };
        assert_eq!(
            basic("127.0.0.1:5000"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(basic("index.docker.io"), Some(("u".into(), "p".into())));
        assert_eq!(basic("other:1"), None);
        let err = from_config(&config, "bad:1").unwrap_err().to_string();
        assert!(err.contains("auths.\"bad:1\".auth is not base64"), "{err}");
    }
}
