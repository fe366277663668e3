//! Why an image was refused, as one typed value from the registry client through verification to the
//! refusal, the metrics label, the JSON evidence and `verify`'s text. Each reason has the one remedy that
//! fixes it: telling a user to `cosign sign` an image whose signature the registry serves empty, or whose
//! registry refused the credentials, sends them the wrong way at the worst moment.

use serde::Serialize;

use crate::registry::{ErrorKind, RegistryError};

/// The digest of zero bytes: what RegistryX reports for a blob it stored empty.
pub const EMPTY_BLOB_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No signature at all for the digest.
    NoSignature,
    /// Signatures exist, but none by this authority's key or accepted identity.
    OtherSigner,
    /// A signature names another digest (copied, or the tag was re-pushed without re-signing).
    OtherDigest,
    /// The registry served the signature's blob as zero bytes (RegistryX's chunked-upload defect).
    EmptyBlob,
    /// Signature material that cannot be read (malformed manifest, payload, bundle or certificate).
    SignatureUnreadable,
    /// The registry, or its token endpoint, refused the credentials.
    Unauthorized,
    /// The registry refused by its own policy (its error code and message).
    RegistryRefused,
    /// The image (or its tag) does not exist in the registry.
    ImageNotFound,
    /// The registry's answer for the image itself does not check out (not its digest, malformed).
    ImageUnreadable,
    /// No answer, or no connection, in time.
    Unreachable,
    /// The transparency-log entry is missing or does not verify.
    TransparencyLog,
    /// The signing certificate does not chain to the authority's trust root.
    Certificate,
    /// A Rego rule denied, with its module's message.
    Rego,
}

impl Reason {
    /// The metrics label and the JSON value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoSignature => "no_signature",
            Reason::OtherSigner => "other_signer",
            Reason::OtherDigest => "other_digest",
            Reason::EmptyBlob => "empty_blob",
            Reason::SignatureUnreadable => "signature_unreadable",
            Reason::Unauthorized => "unauthorized",
            Reason::RegistryRefused => "registry_refused",
            Reason::ImageNotFound => "image_not_found",
            Reason::ImageUnreadable => "image_unreadable",
            Reason::Unreachable => "unreachable",
            Reason::TransparencyLog => "transparency_log",
            Reason::Certificate => "certificate",
            Reason::Rego => "rego",
        }
    }

    /// What a registry failure reading the image itself (its tag, its manifest, its platforms) means:
    /// as [`Reason::of_registry_error`], but bytes that do not check out are the image's, not a
    /// signature's.
    pub fn of_image_read(error: &RegistryError) -> Reason {
        match Reason::of_registry_error(error) {
            Reason::EmptyBlob | Reason::SignatureUnreadable => Reason::ImageUnreadable,
            other => other,
        }
    }

    /// What a registry failure means for the user.
    pub fn of_registry_error(error: &RegistryError) -> Reason {
        match &error.kind {
            ErrorKind::Timeout { .. }
            | ErrorKind::NoRegistry { .. }
            | ErrorKind::RedirectRefused { .. }
            | ErrorKind::Config { .. } => Reason::Unreachable,
            ErrorKind::Unauthorized { .. } => Reason::Unauthorized,
            ErrorKind::Denied { .. } => Reason::RegistryRefused,
            // Overloaded, rate-limiting or failing: not a decision of the registry's policy.
            ErrorKind::Status { status, .. } if *status == 429 || *status >= 500 => {
                Reason::Unreachable
            }
            ErrorKind::Status { .. } => Reason::RegistryRefused,
            ErrorKind::NotFound => Reason::ImageNotFound,
            ErrorKind::DigestMismatch { actual, .. } if actual == EMPTY_BLOB_DIGEST => {
                Reason::EmptyBlob
            }
            ErrorKind::DigestMismatch { .. }
            | ErrorKind::TooLarge { .. }
            | ErrorKind::Malformed { .. } => Reason::SignatureUnreadable,
        }
    }

    /// Of several reasons, the one that explains a refusal best: a signature for another digest says
    /// more than one by another signer, a failed check more than a failed read.
    pub fn most_telling(reasons: impl IntoIterator<Item = Reason>) -> Option<Reason> {
        // An empty blob ranks above another signer: with a CI signature by another key beside the
        // release signature whose blob reads empty, "sign again" would only make another empty blob.
        const ORDER: [Reason; 13] = [
            Reason::ImageUnreadable,
            Reason::OtherDigest,
            Reason::EmptyBlob,
            Reason::OtherSigner,
            Reason::Certificate,
            Reason::TransparencyLog,
            Reason::Unauthorized,
            Reason::RegistryRefused,
            Reason::Unreachable,
            Reason::ImageNotFound,
            Reason::SignatureUnreadable,
            Reason::NoSignature,
            Reason::Rego,
        ];
        let seen: Vec<Reason> = reasons.into_iter().collect();
        ORDER.into_iter().find(|r| seen.contains(r))
    }

    /// Whether signing the image (again) is what fixes it.
    pub fn is_fixed_by_signing(self) -> bool {
        matches!(
            self,
            Reason::NoSignature | Reason::OtherSigner | Reason::OtherDigest
        )
    }

    /// The remedy for a reason that signing does not fix, about `registry`; `None` where the message
    /// itself is the remedy (a Rego module's words).
    pub fn remedy(self, registry: &str) -> Option<String> {
        Some(match self {
            Reason::NoSignature | Reason::OtherSigner | Reason::OtherDigest | Reason::Rego => {
                return None;
            }
            Reason::EmptyBlob => format!(
                "the signature exists, but {registry} serves its blob as 0 bytes (RegistryX stores blobs \
                 uploaded in chunks empty): re-upload the signature layer in one request (a monolithic \
                 PUT), or keep signatures in a registry without this defect; signing again will not help"
            ),
            Reason::SignatureUnreadable => format!(
                "the signature material in {registry} is malformed: replace it with one written by cosign"
            ),
            Reason::Unauthorized => format!(
                "{registry} refused the credentials: check the policy's spec.registry.credentialsSecretRef \
                 (a kubernetes.io/dockerconfigjson Secret with an entry for {registry}), or the Docker \
                 config for `registryx-guard verify`"
            ),
            Reason::RegistryRefused => format!(
                "{registry} refused by its own policy: allow reading the image and its signatures there \
                 (RegistryX: its policy editor); registryx-guard cannot verify what it cannot read"
            ),
            Reason::ImageNotFound => {
                format!("{registry} does not hold this image: check the name and the tag")
            }
            Reason::ImageUnreadable => format!(
                "{registry} served the image's manifest in a form that does not check out (not its \
                 digest, or malformed): the registry is broken or lies; nothing here can be verified"
            ),
            Reason::Unreachable => format!(
                "check that {registry} answers from registryx-guard's network, and the policy's \
                 spec.registry (insecure, caBundle)"
            ),
            Reason::TransparencyLog => {
                "check the authority's transparencyLog (required, rekorKey) \
                 against the log that recorded the signature"
                    .to_owned()
            }
            Reason::Certificate => {
                "the signing certificate does not chain to the authority's trust \
                 root: check keyless.trustRoot (fulcioCA, trustedRootJSON)"
                    .to_owned()
            }
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A signature that does not verify, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }

    pub fn unreadable(message: impl Into<String>) -> Failure {
        Failure::new(Reason::SignatureUnreadable, message)
    }

    pub fn tlog(message: impl Into<String>) -> Failure {
        Failure::new(Reason::TransparencyLog, message)
    }

    pub fn certificate(message: impl Into<String>) -> Failure {
        Failure::new(Reason::Certificate, message)
    }

    pub fn other_signer(message: impl Into<String>) -> Failure {
        Failure::new(Reason::OtherSigner, message)
    }

    pub fn other_digest(message: impl Into<String>) -> Failure {
        Failure::new(Reason::OtherDigest, message)
    }
}

/// A registry read that failed during signature discovery, with its reason.
#[derive(Clone, Debug)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl From<&RegistryError> for Problem {
    fn from(error: &RegistryError) -> Problem {
        let reason = Reason::of_registry_error(error);
        let message = match reason {
            Reason::EmptyBlob => format!(
                "{}: {}: the registry returned an empty blob",
                error.registry, error.step
            ),
            _ => error.to_string(),
        };
        Problem { reason, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_blob_is_named_as_such_and_not_fixed_by_signing() {
        let error = RegistryError {
            registry: "r.example".into(),
            step: Box::new(crate::registry::Step::ReadSignatureLayer {
                digest: "sha256:ab".into(),
            }),
            kind: ErrorKind::DigestMismatch {
                expected: "sha256:ab".into(),
                actual: EMPTY_BLOB_DIGEST.into(),
            },
        };
        let problem = Problem::from(&error);
        assert_eq!(problem.reason, Reason::EmptyBlob);
        assert!(
            problem.message.contains("empty blob"),
            "{}",
            problem.message
        );
        assert!(!Reason::EmptyBlob.is_fixed_by_signing());
        assert!(
            Reason::EmptyBlob
                .remedy("r.example")
                .unwrap()
                .contains("0 bytes")
        );
        assert_eq!(
            serde_json::to_value(Reason::OtherDigest).unwrap(),
            "other_digest"
        );
    }
}
