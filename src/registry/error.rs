//! The one error of registry work: which registry, which step of the work, and what went wrong (a
//! closed set), worded the same wherever it is raised.

use std::fmt;

/// The one text of every failure to reach a registry: a closed port, a reset, a TLS failure, and an
/// answer from something that is not a registry all read the same.
pub(crate) const NO_REGISTRY: &str = "no registry answered: cannot connect, the connection failed, or \
     what answered is not a registry (the log has the cause: the webhook's, or verify's stderr)";

/// A registry step that failed: `{registry}: {step}: {kind}`.
#[derive(Clone, Debug)]
pub struct RegistryError {
    /// The registry as written in references.
    pub registry: String,
    /// Boxed: the error stays small in the `Result`s that carry it.
    pub step: Box<Step>,
    pub kind: ErrorKind,
}

/// The step of the work that failed, as its message names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Building the client for the registry (its caBundle, its HTTP client).
    Configure,
    /// `resolve <repository>:<tag>`: the tag's digest (HEAD, then GET).
    Resolve {
        repository: String,
        tag: String,
    },
    FetchManifest {
        repository: String,
        reference: String,
    },
    FetchBlob {
        repository: String,
        digest: String,
    },
    ListReferrers {
        repository: String,
        digest: String,
    },
    ListTags {
        repository: String,
    },
    /// cosign's `sha256-<hex>` fallback tag, read as an index.
    ReadFallbackTag {
        repository: String,
        tag: String,
    },
    /// An image index read for its platform manifests.
    ReadImageIndex {
        repository: String,
        digest: String,
    },
    ReadSignatureLayer {
        digest: String,
    },
    /// The token asked of `realm` to answer a 401 during `during`.
    Token {
        during: Box<Step>,
        realm: String,
    },
}

/// What went wrong.
#[derive(Clone, Debug)]
pub enum ErrorKind {
    /// The deadline (or the per-request timeout) passed, waiting for an answer or, with
    /// `for_memory`, for the read budget to take the answer in.
    Timeout {
        seconds: f64,
        for_memory: bool,
    },
    /// The registry's 403 with its own error: its policy refused (RegistryX's `DENIED`).
    Denied {
        message: String,
    },
    Unauthorized {
        detail: String,
    },
    /// A 404 carrying the registry's own error.
    NotFound,
    /// Any other status carrying the registry's own error.
    Status {
        status: u16,
        detail: String,
    },
    TooLarge {
        limit: usize,
    },
    DigestMismatch {
        expected: String,
        actual: String,
    },
    /// An answer that does not have the shape it must have.
    Malformed {
        detail: String,
    },
    /// No registry answered (see `NO_REGISTRY`); `reading` when the connection failed while the
    /// answer was being read.
    NoRegistry {
        reading: bool,
    },
    /// A redirect to `host` (quoted), which no policy names, was not followed.
    RedirectRefused {
        host: String,
    },
    /// The client could not be built for the registry's configuration.
    Config {
        detail: String,
    },
}

impl RegistryError {
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, ErrorKind::NotFound)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout { .. })
    }
}

impl std::error::Error for RegistryError {}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RegistryError {
            registry,
            step,
            kind,
        } = self;
        match kind {
            ErrorKind::Config { detail } => write!(f, "registry {registry}: {detail}"),
            ErrorKind::Timeout {
                seconds,
                for_memory,
            } => {
                let waiting = if *for_memory {
                    " (waiting for memory to read the answer into)"
                } else {
                    ""
                };
                write!(
                    f,
                    "{registry}: {step}{waiting}: no answer within {seconds:.1}s"
                )
            }
            _ => write!(f, "{registry}: {step}: {kind}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Configure => f.write_str("set up the client"),
            Step::Resolve { repository, tag } => write!(f, "resolve {repository}:{tag}"),
            Step::FetchManifest {
                repository,
                reference,
            } => write!(f, "fetch manifest {repository}:{reference}"),
            Step::FetchBlob { repository, digest } => write!(f, "fetch blob {repository}@{digest}"),
            Step::ListReferrers { repository, digest } => {
                write!(f, "list referrers of {repository}@{digest}")
            }
            Step::ListTags { repository } => write!(f, "list tags of {repository}"),
            Step::ReadFallbackTag { repository, tag } => {
                write!(f, "read fallback tag {repository}:{tag}")
            }
            Step::ReadImageIndex { repository, digest } => {
                write!(f, "read image index {repository}@{digest}")
            }
            Step::ReadSignatureLayer { digest } => write!(f, "read signature layer {digest}"),
            Step::Token { during, realm } => write!(f, "{during}: get a token from {realm}"),
        }
    }
}

impl ErrorKind {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ErrorKind::Timeout { .. } => "timeout",
            ErrorKind::Denied { .. } => "denied",
            ErrorKind::Unauthorized { .. } => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Status { .. } => "status",
            ErrorKind::TooLarge { .. } => "too_large",
            ErrorKind::DigestMismatch { .. } => "digest_mismatch",
            ErrorKind::Malformed { .. } => "malformed",
            ErrorKind::NoRegistry { .. } | ErrorKind::RedirectRefused { .. } => "transport",
            ErrorKind::Config { .. } => "config",
        }
    }
}

/// What went wrong, as it reads after `{registry}: {step}: ` (a timeout and a configuration error
/// are laid out by [`RegistryError`] itself).
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Timeout { seconds, .. } => write!(f, "no answer within {seconds:.1}s"),
            ErrorKind::Denied { message } => write!(f, "refused by the registry: {message}"),
            ErrorKind::Unauthorized { detail } => write!(f, "not authorized ({detail})"),
            ErrorKind::NotFound => f.write_str("not found"),
            ErrorKind::Status { status, detail } => write!(f, "HTTP {status}: {detail}"),
            ErrorKind::TooLarge { limit } => {
                write!(f, "response larger than the {limit} byte limit")
            }
            ErrorKind::DigestMismatch { expected, actual } => write!(
                f,
                "content does not match its digest (expected {expected}, got {actual})"
            ),
            ErrorKind::Malformed { detail } | ErrorKind::Config { detail } => f.write_str(detail),
            ErrorKind::NoRegistry { reading: false } => f.write_str(NO_REGISTRY),
            ErrorKind::NoRegistry { reading: true } => {
                write!(f, "reading the answer: {NO_REGISTRY}")
            }
            ErrorKind::RedirectRefused { host } => write!(
                f,
                "the registry redirected to {host}, a host no policy names, and registryx-guard does \
                 not follow it; if that host serves this registry's content (blob storage, a CDN), add \
                 it to spec.registry.redirectHosts of the policy"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(step: Step, kind: ErrorKind) -> String {
        RegistryError {
            registry: "r.example".into(),
            step: Box::new(step),
            kind,
        }
        .to_string()
    }

    #[test]
    fn messages_read_registry_step_and_what_went_wrong() {
        let resolve = || Step::Resolve {
            repository: "team/app".into(),
            tag: "v1".into(),
        };
        assert_eq!(
            error(
                resolve(),
                ErrorKind::Timeout {
                    seconds: 2.0,
                    for_memory: false
                }
            ),
            "r.example: resolve team/app:v1: no answer within 2.0s"
        );
        assert_eq!(
            error(
                Step::FetchBlob {
                    repository: "team/app".into(),
                    digest: "sha256:ab".into()
                },
                ErrorKind::Timeout {
                    seconds: 0.5,
                    for_memory: true
                }
            ),
            "r.example: fetch blob team/app@sha256:ab (waiting for memory to read the answer into): \
             no answer within 0.5s"
        );
        assert_eq!(
            error(
                Step::Token {
                    during: Box::new(resolve()),
                    realm: "https://r.example/token".into()
                },
                ErrorKind::Unauthorized {
                    detail: "no".into()
                }
            ),
            "r.example: resolve team/app:v1: get a token from https://r.example/token: not \
             authorized (no)"
        );
        assert_eq!(
            error(
                Step::Configure,
                ErrorKind::Config {
                    detail: "caBundle holds no PEM certificate".into()
                }
            ),
            "registry r.example: caBundle holds no PEM certificate"
        );
        assert_eq!(
            error(
                Step::ListTags {
                    repository: "a".into()
                },
                ErrorKind::NoRegistry { reading: true }
            ),
            format!("r.example: list tags of a: reading the answer: {NO_REGISTRY}")
        );
    }
}
