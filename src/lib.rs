//! registryx-guard: a Kubernetes admission webhook that admits a workload only when every image it runs
//! carries a cosign signature that the matching `ImageSigningPolicy` resources accept.
//!
//! The crate is one library with a thin binary (`src/main.rs`). Modules are named after what they do,
//! and the decision pipeline's stages use only the stages before them (see [`decide`] for the list):
//! `untrusted` (foreign text made safe to show) → `registry` → `rego` (the engine) → `policy` →
//! `verify` → `decide` → `admission`; `controller`, `server` and `cli` drive them.

pub mod admission;
pub mod cli;
pub mod controller;
pub mod decide;
pub mod policy;
pub mod registry;
pub mod rego;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod untrusted;
pub mod verify;

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

    #[error("policy controller: {0}")]
    Controller(#[from] controller::ControllerError),

    #[error("TLS configuration: {0}")]
    Tls(String),

    #[error("configuration: {0}")]
    Config(String),

    #[error("cannot serialize {what}: {reason}")]
    Serialize { what: &'static str, reason: String },

    #[error(transparent)]
    Registry(#[from] registry::RegistryError),

    #[error("policy {policy:?}: {source}")]
    Policy {
        policy: String,
        #[source]
        source: policy::PolicyError,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
