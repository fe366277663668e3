//! Registry credentials: a username and password, and the Docker `config.json` that holds them per
//! registry (its `auths`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

/// A username and password (or token). Debug and Display never show the secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

/// Credentials per registry host, read from a Docker `config.json` (the `DOCKER_CONFIG` folder, as cosign
/// does) or from the `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` Secret.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    auths: HashMap<String, Credentials>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl DockerConfig {
    /// Parses config.json content. Entries without usable credentials are skipped; a file that is not
    /// JSON is an error whose message never echoes the content.
    pub fn parse(json: &[u8]) -> Result<DockerConfig, String> {
        let file: ConfigFile = serde_json::from_slice(json).map_err(|e| {
            format!(
                "not a Docker config.json (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let mut auths = HashMap::new();
        for (server, entry) in file.auths {
            let credentials = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) => Some(Credentials { username, password }),
                (_, _, Some(auth)) => STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|pair| {
                        pair.split_once(':').map(|(u, p)| Credentials {
                            username: u.to_owned(),
                            password: p.to_owned(),
                        })
                    }),
                _ => None,
            };
            if let Some(credentials) = credentials {
                auths.insert(normalize_server(&server), credentials);
            }
        }
        Ok(DockerConfig { auths })
    }

    /// Reads `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; absent files give no credentials.
    pub fn from_environment() -> Result<DockerConfig, String> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")));
        let Some(path) = dir.map(|d| d.join("config.json")) else {
            return Ok(DockerConfig::default());
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                DockerConfig::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Credentials for a registry as written in image references (`docker.io` also matches Docker Hub's
    /// historical `https://index.docker.io/v1/` key).
    pub fn credentials_for(&self, registry: &str) -> Option<Credentials> {
        let key = normalize_server(registry);
        self.auths.get(&key).cloned()
    }
}

fn normalize_server(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    // The same canonical host as image references, so `Registry.Example.com:443` in a Docker config
    // holds the credentials of `registry.example.com/...`.
    super::reference::canonical_registry(host).unwrap_or_else(|_| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_auth_and_never_prints_secrets() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpzM2NyZXQ="},"reg.example:5000":{"username":"u","password":"p"}}}"#;
        let config = DockerConfig::parse(json).unwrap();
        let hub = config.credentials_for("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "s3cret")
        );
        assert_eq!(
            config.credentials_for("reg.example:5000").unwrap().username,
            "u"
        );
        assert!(!format!("{hub:?}").contains("s3cret"));
        let error = DockerConfig::parse(b"{\"auths\": {\"x\": {\"auth\": 1}}} secret").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }
}
