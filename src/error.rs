//! The crate's error type: what can go wrong outside a single request, each variant naming the file,
//! address or object it was working on.

use std::path::PathBuf;

/// Everything that can go wrong in the library, each variant naming what it was working on so that the
/// message alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid ImageSigningPolicy: {source}")]
    PolicyFile {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("{path}: expected kind ImageSigningPolicy of registryx.io/v1alpha1, found {found}")]
    NotAPolicy { path: PathBuf, found: String },

    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),

    #[error("cannot reach the cluster: {0}")]
    KubeConfig(String),

    #[error("TLS configuration: {0}")]
    Tls(String),

    #[error("configuration: {0}")]
    Config(String),

    #[error("cannot serialize {what}: {reason}")]
    Serialize { what: &'static str, reason: String },

    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
