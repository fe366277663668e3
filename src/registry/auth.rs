//! Registry credentials: a username and password, and the Docker `config.json` that holds them per
//! registry (its `auths`), or names the credential helper that does (`credHelpers`, `credsStore`).

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
    /// `credHelpers`: the helper (`docker-credential-<name>`) of each registry.
    helpers: HashMap<String, String>,
    /// `credsStore`: the helper of every registry that `credHelpers` does not name.
    store: Option<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// What a credential helper's `get` prints (the docker-credential-helpers protocol).
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// How long a credential helper may take: a keychain that prompts or hangs must not hold `verify`.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
        let helpers = file
            .cred_helpers
            .into_iter()
            .filter(|(_, helper)| !helper.is_empty())
            .map(|(server, helper)| (normalize_server(&server), helper))
            .collect();
        let store = file.creds_store.filter(|store| !store.is_empty());
        Ok(DockerConfig {
            auths,
            helpers,
            store,
        })
    }

    /// Asks the credential helpers the config names (`credHelpers` for the registry, else `credsStore`)
    /// for the credentials of each of `registries`, as docker, cosign and crane do: a helper's answer
    /// takes the place of the `auths` entry; a helper that knows nothing leaves that entry. Only the
    /// command line does this (a pull Secret names no helper the webhook could run). Returns one line
    /// per helper that failed, for the user (never a secret).
    pub fn ask_helpers<'a>(
        &mut self,
        registries: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let mut asked = std::collections::HashSet::new();
        for registry in registries {
            let key = normalize_server(registry);
            if !asked.insert(key.clone()) {
                continue;
            }
            let Some(helper) = self.helpers.get(&key).or(self.store.as_ref()).cloned() else {
                continue;
            };
            match run_helper(&helper, &helper_server(&key)) {
                Ok(Some(credentials)) => {
                    self.auths.insert(key, credentials);
                }
                Ok(None) => {}
                Err(error) => notes.push(format!(
                    "Docker credential helper docker-credential-{helper} for {key}: {error}"
                )),
            }
        }
        notes
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

/// The server name a helper is asked about: Docker Hub under its historical key, others by host.
fn helper_server(key: &str) -> String {
    if key == "docker.io" {
        "https://index.docker.io/v1/".to_owned()
    } else {
        key.to_owned()
    }
}

/// Runs `docker-credential-<helper> get` with `server` on stdin. `Ok(None)`: the helper has nothing for
/// it ("credentials not found", as every helper says it). Errors never carry the helper's stdout.
fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    // The name becomes a program name: nothing that could make it a path.
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!("{helper:?} is not a helper name"));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is answered by its exit status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() >= HELPER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {HELPER_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout).to_lowercase()
            + &String::from_utf8_lossy(&output.stderr).to_lowercase();
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!("{program} get failed ({})", output.status));
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|_| format!("{program} get did not answer the helpers' JSON"))?;
    if answer.username == "<token>" {
        // An identity (OAuth refresh) token: exchanged by docker's own token flow, which this client
        // does not speak; said rather than sent as a password.
        return Err(
            "the helper holds an identity token, which registryx-guard cannot use; \
                    log in with a username and password or a registry token"
                .to_owned(),
        );
    }
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
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
