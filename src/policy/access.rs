//! How a compiled policy reaches its registry: its TLS, credentials and allowed hosts, turned into a
//! client configuration for one image.

use crate::registry::{DockerConfig, ImageRef, RegistryConfig};

/// How a policy reaches its registry.
#[derive(Clone, Debug, Default)]
pub struct CompiledAccess {
    pub insecure: bool,
    pub ca_bundle: Option<String>,
    /// Pull credentials from the policy's `credentialsSecretRef`, by registry.
    pub credentials: Option<DockerConfig>,
    /// RegistryX's REST API, for `input.vulnerabilities`.
    pub registryx_api: Option<String>,
    /// Hosts besides the registry's own that may serve its tokens (and so receive its credentials).
    pub token_hosts: Vec<String>,
    /// Hosts besides the registry's own that its redirects may lead to.
    pub redirect_hosts: Vec<String>,
}

impl CompiledAccess {
    /// The client configuration for `image`: the policy's credentials for its registry, else `fallback`'s
    /// (the command line's Docker config).
    pub fn config_for(&self, image: &ImageRef, fallback: Option<&DockerConfig>) -> RegistryConfig {
        let credentials = self
            .credentials
            .as_ref()
            .and_then(|config| config.credentials_for(&image.registry))
            .or_else(|| fallback.and_then(|config| config.credentials_for(&image.registry)));
        RegistryConfig {
            insecure: self.insecure,
            ca_bundle: self.ca_bundle.clone(),
            credentials,
            token_hosts: self.token_hosts.clone(),
            // RegistryX's REST API is named by the policy too: its own redirects may stay on its host.
            redirect_hosts: self
                .redirect_hosts
                .iter()
                .cloned()
                .chain(
                    self.registryx_api
                        .as_deref()
                        .and_then(|api| reqwest::Url::parse(api).ok())
                        .and_then(|url| url.host_str().map(str::to_ascii_lowercase)),
                )
                .collect(),
            ..RegistryConfig::default()
        }
    }
}
