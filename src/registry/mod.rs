//! OCI registry access: reference parsing, authentication, tag-to-digest resolution, and the reads that
//! signature discovery needs, each request bounded in time and size.
//!
//! The client is written on reqwest rather than taken from oci-client because RegistryX needs things
//! oci-client cannot be told: its token challenge names `localhost:5000` whatever host it is reached at,
//! its 403 `DENIED` carries a policy message that must reach the user, and cosign's referrers fallback
//! tag must be read whenever the referrers endpoint answers anything but an index (oci-client only falls
//! back on 404). Every error names the registry and the step.

mod auth;
mod client;
pub mod grammar;
mod reference;

pub use auth::{Credentials, DockerConfig};
pub(crate) use client::is_sha256_digest;
pub use client::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, Fetched, OCI_INDEX, OCI_MANIFEST,
    RegistryClient, RegistryConfig, Resolved,
};
pub use reference::{DOCKER_HUB, ImageRef, canonical_registry};

/// A registry step that failed, naming the registry, the step and the cause.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image reference {reference:?} does not parse: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("{registry}: {step}: no answer within {seconds:.1}s")]
    Timeout {
        registry: String,
        step: String,
        seconds: f64,
    },

    #[error("{registry}: {step}: refused by the registry: {message}")]
    Denied {
        registry: String,
        step: String,
        message: String,
    },

    #[error("{registry}: {step}: not authorized ({detail})")]
    Unauthorized {
        registry: String,
        step: String,
        detail: String,
    },

    #[error("{registry}: {step}: not found")]
    NotFound { registry: String, step: String },

    #[error("{registry}: {step}: HTTP {status}: {detail}")]
    Status {
        registry: String,
        step: String,
        status: u16,
        detail: String,
    },

    #[error("{registry}: {step}: response larger than the {limit} byte limit")]
    TooLarge {
        registry: String,
        step: String,
        limit: usize,
    },

    #[error(
        "{registry}: {step}: content does not match its digest (expected {expected}, got {actual})"
    )]
    DigestMismatch {
        registry: String,
        step: String,
        expected: String,
        actual: String,
    },

    #[error("{registry}: {step}: {detail}")]
    Malformed {
        registry: String,
        step: String,
        detail: String,
    },

    #[error("{registry}: {step}: {detail}")]
    Transport {
        registry: String,
        step: String,
        detail: String,
    },

    #[error("registry {registry}: {detail}")]
    Config { registry: String, detail: String },
}

impl RegistryError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::InvalidReference { .. } => "invalid_reference",
            RegistryError::Timeout { .. } => "timeout",
            RegistryError::Denied { .. } => "denied",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Status { .. } => "status",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::Malformed { .. } => "malformed",
            RegistryError::Transport { .. } => "transport",
            RegistryError::Config { .. } => "config",
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}
