//! Why an image was refused, as one closed type from the registry client through verification and
//! admission to the refusal, the metrics label, the JSON evidence and `verify`'s text. Each reason has
//! the one remedy that fixes it, written here and nowhere else: telling a user to `cosign sign` an image
//! whose signature the registry serves empty, or whose registry refused the credentials, sends them the
//! wrong way at the worst moment.

use serde::Serialize;

use crate::registry::registryx::{ApiError, ApiErrorKind};
use crate::registry::{ErrorKind, RegistryError};

/// The digest of zero bytes: what RegistryX reports for a blob it stored empty.
pub const EMPTY_BLOB_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // What verification found.
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
    /// No answer, or no connection, in time (or no verification slot free for the registry).
    Unreachable,
    /// The transparency-log entry is missing or does not verify.
    TransparencyLog,
    /// The signing certificate does not chain to the authority's trust root.
    Certificate,
    /// The keyless certificate carries no embedded SCT, though the authority knows a CT log.
    SctMissing,
    /// The keyless certificate's embedded SCTs do not verify with a CT log key the authority trusts.
    SctInvalid,
    /// A Rego rule denied, with its module's message.
    Rego,
    /// The image is signed, but no attestation of a required predicate type is stored for it.
    AttestationMissing,
    /// Attestations of the required type exist, but none verifies against the authority (unsigned,
    /// or signed by another key or identity).
    AttestationOtherSigner,
    /// An attestation of the required type, signed by the authority, names another digest.
    AttestationOtherDigest,
    /// The authority signed attestations for the digest, but of other predicate types only.
    AttestationOtherType,

    // What admission decides before or after verification.
    /// No policy governs the image, and unmatched images are refused (or warned about).
    NoPolicy,
    /// A policy that governs the image does not compile: its images are refused until it is fixed.
    NotReady,
    /// A tag that a pinning policy admitted reached validation without its digest.
    Unpinned,
    /// The tag names another digest than the one recorded when the workload was admitted.
    TagMoved,
    /// The object cannot be read as the kind it claims (no pod spec, a container without an image).
    Malformed,
    /// An image reference that does not parse.
    InvalidReference,
    /// The namespace's labels cannot be known, so its policies' selectors cannot be applied.
    NamespaceUnknown,
    /// The object names more distinct images than one review checks.
    TooManyImages,
}

/// The metrics label of a decision that admitted an image: every governing policy passed.
pub const VERIFIED_LABEL: &str = "verified";

/// What a remedy is about: the registry that holds the image and, where signing fixes it, what to sign
/// and as whom.
#[derive(Clone, Copy, Debug, Default)]
pub struct About<'a> {
    pub registry: &'a str,
    pub signing: Option<Signing<'a>>,
}

/// The signing a remedy asks for: `target` (`image@digest`), by `authority`.
#[derive(Clone, Copy, Debug)]
pub struct Signing<'a> {
    pub target: &'a str,
    pub authority: &'a str,
    /// The authority trusts identities (Fulcio certificates), not a key.
    pub keyless: bool,
    /// The predicate type of a required attestation that is not there.
    pub attestation: Option<&'a str>,
}

impl<'a> About<'a> {
    pub fn registry(registry: &'a str) -> About<'a> {
        About {
            registry,
            signing: None,
        }
    }
}

impl Reason {
    /// Every reason, in declaration order: the closed set of the metrics' `reason` label (with
    /// [`VERIFIED_LABEL`]).
    pub const ALL: [Reason; 27] = [
        Reason::NoSignature,
        Reason::OtherSigner,
        Reason::OtherDigest,
        Reason::EmptyBlob,
        Reason::SignatureUnreadable,
        Reason::Unauthorized,
        Reason::RegistryRefused,
        Reason::ImageNotFound,
        Reason::ImageUnreadable,
        Reason::Unreachable,
        Reason::TransparencyLog,
        Reason::Certificate,
        Reason::SctMissing,
        Reason::SctInvalid,
        Reason::Rego,
        Reason::AttestationMissing,
        Reason::AttestationOtherSigner,
        Reason::AttestationOtherDigest,
        Reason::AttestationOtherType,
        Reason::NoPolicy,
        Reason::NotReady,
        Reason::Unpinned,
        Reason::TagMoved,
        Reason::Malformed,
        Reason::InvalidReference,
        Reason::NamespaceUnknown,
        Reason::TooManyImages,
    ];

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
            Reason::SctMissing => "sct_missing",
            Reason::SctInvalid => "sct_invalid",
            Reason::Rego => "rego",
            Reason::AttestationMissing => "attestation_missing",
            Reason::AttestationOtherSigner => "attestation_other_signer",
            Reason::AttestationOtherDigest => "attestation_other_digest",
            Reason::AttestationOtherType => "attestation_other_type",
            Reason::NoPolicy => "no_policy",
            Reason::NotReady => "not_ready",
            Reason::Unpinned => "unpinned",
            Reason::TagMoved => "tag_moved",
            Reason::Malformed => "malformed",
            Reason::InvalidReference => "invalid_reference",
            Reason::NamespaceUnknown => "namespace_unknown",
            Reason::TooManyImages => "too_many_images",
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

    /// What a failure to read RegistryX's REST API (the vulnerability summary) means: an outage is
    /// `unreachable`, never a policy's `rego` verdict, so that metrics and the user see what happened.
    pub fn of_registryx_api(error: &ApiError) -> Reason {
        match &error.kind {
            ApiErrorKind::NoAnswer(_) => Reason::Unreachable,
            ApiErrorKind::Status(401 | 403) => Reason::Unauthorized,
            ApiErrorKind::Status(status) if *status == 429 || *status >= 500 => Reason::Unreachable,
            ApiErrorKind::Status(_) => Reason::RegistryRefused,
            ApiErrorKind::Malformed(_) => Reason::ImageUnreadable,
            ApiErrorKind::BadRequest(_) => Reason::InvalidReference,
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
        // An authority that verified the signature but misses an attestation explains more than
        // another authority that found no signature of its own.
        const ORDER: [Reason; 19] = [
            Reason::ImageUnreadable,
            Reason::AttestationOtherDigest,
            Reason::AttestationOtherSigner,
            Reason::AttestationOtherType,
            Reason::AttestationMissing,
            Reason::OtherDigest,
            Reason::EmptyBlob,
            Reason::OtherSigner,
            Reason::Certificate,
            Reason::SctInvalid,
            Reason::SctMissing,
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

    /// Whether it is about a required attestation (the signature itself verified).
    pub fn is_about_attestations(self) -> bool {
        matches!(
            self,
            Reason::AttestationMissing
                | Reason::AttestationOtherSigner
                | Reason::AttestationOtherDigest
                | Reason::AttestationOtherType
        )
    }

    /// Whether signing the image (again) is what fixes it.
    pub fn is_fixed_by_signing(self) -> bool {
        matches!(
            self,
            Reason::NoSignature | Reason::OtherSigner | Reason::OtherDigest
        )
    }

    /// What fixes it, `about` the image's registry and what to sign; `None` where the message itself
    /// is the remedy (a Rego module's words, a reference that does not parse) or signing is the remedy
    /// but nothing says as whom.
    pub fn remedy(self, about: &About) -> Option<String> {
        let registry = about.registry;
        Some(match self {
            Reason::NoSignature | Reason::OtherSigner | Reason::OtherDigest => {
                let signing = about.signing?;
                let context = match self {
                    Reason::OtherDigest => {
                        "the signatures found are for another digest (re-pushed without re-signing?): "
                    }
                    Reason::OtherSigner => "signatures exist, but by other signers: ",
                    _ => "",
                };
                let (target, authority) = (signing.target, signing.authority);
                if signing.keyless {
                    format!(
                        "{context}sign it with: cosign sign {target}, as an identity authority \
                         {authority} accepts"
                    )
                } else {
                    format!(
                        "{context}sign it with: cosign sign --key <the private key of authority \
                         {authority}> {target}"
                    )
                }
            }
            Reason::AttestationMissing
            | Reason::AttestationOtherSigner
            | Reason::AttestationOtherDigest
            | Reason::AttestationOtherType => {
                let signing = about.signing?;
                let context = match self {
                    Reason::AttestationOtherSigner => {
                        "attestations of this type exist, but none verifies against the authority: "
                    }
                    Reason::AttestationOtherDigest => {
                        "the attestations of this type found are for another digest: "
                    }
                    Reason::AttestationOtherType => {
                        "the attestations found are of other predicate types: "
                    }
                    _ => "",
                };
                let (target, authority) = (signing.target, signing.authority);
                let kind = signing.attestation.unwrap_or("<type>");
                if signing.keyless {
                    format!(
                        "{context}attest it with: cosign attest --type {kind} --predicate <file> \
                         {target}, as an identity authority {authority} accepts"
                    )
                } else {
                    format!(
                        "{context}attest it with: cosign attest --key <the private key of authority \
                         {authority}> --type {kind} --predicate <file> {target}"
                    )
                }
            }
            Reason::Rego | Reason::Malformed | Reason::InvalidReference => return None,
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
                 against the log that recorded the signature or attestation"
                    .to_owned()
            }
            Reason::Certificate => {
                "the signing certificate does not chain to the authority's trust \
                 root: check keyless.trustRoot (fulcioCA, trustedRootJSON)"
                    .to_owned()
            }
            Reason::SctMissing => {
                "the certificate was not logged to certificate transparency: sign with a Fulcio \
                 that embeds SCTs from the CT log of keyless.trustRoot (ctLogKey, or the ctlogs of \
                 trustedRootJSON); only if your CA logs to no CT log, set keyless.ctLog.required: false"
                    .to_owned()
            }
            Reason::SctInvalid => {
                "no CT log this authority trusts logged the certificate (a forged or altered SCT, \
                 or one of another log): check keyless.trustRoot's ctLogKey, or the ctlogs of \
                 trustedRootJSON, against the CT log your Fulcio uses"
                    .to_owned()
            }
            Reason::NoPolicy => {
                "add this image to the spec.images of a policy that verifies it".to_owned()
            }
            Reason::NotReady => {
                "fix the policy (`kubectl describe imagesigningpolicy <name>` shows \
                 its status); until it is Ready, the images it governs are refused"
                    .to_owned()
            }
            Reason::Unpinned => {
                "name the image by the digest it verified (image:tag@sha256:...), or \
                 check that the MutatingWebhookConfiguration of registryx-guard is installed"
                    .to_owned()
            }
            Reason::TagMoved => {
                "pin the image by digest, or remove the annotation to accept the new \
                 digest"
                    .to_owned()
            }
            Reason::NamespaceUnknown => "retry in a moment".to_owned(),
            Reason::TooManyImages => "split the workload, or name images that several containers \
                 share by one reference"
                .to_owned(),
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Why something was refused, in a closed reason and words a user reads: a signature that does not
/// verify, a registry read that failed, an image that admission refuses.
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

impl Failure {
    /// A failure whose message ends with its reason's remedy `about` the subject.
    pub fn remedied(reason: Reason, message: impl Into<String>, about: &About) -> Failure {
        let failure = Failure::new(reason, message);
        Failure {
            message: failure.with_remedy(about),
            ..failure
        }
    }

    /// The refusal as a user reads it: what happened, then the remedy `about` it.
    pub fn with_remedy(&self, about: &About) -> String {
        match self.reason.remedy(about) {
            Some(remedy) => format!("{}; {remedy}", self.message),
            None => self.message.clone(),
        }
    }
}

/// A registry read that failed (during signature discovery, say), with its reason.
impl From<&RegistryError> for Failure {
    fn from(error: &RegistryError) -> Failure {
        let reason = Reason::of_registry_error(error);
        let message = match reason {
            Reason::EmptyBlob => format!(
                "{}: {}: the registry returned an empty blob",
                error.registry, error.step
            ),
            _ => error.to_string(),
        };
        Failure { reason, message }
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
        let problem = Failure::from(&error);
        assert_eq!(problem.reason, Reason::EmptyBlob);
        assert!(
            problem.message.contains("empty blob"),
            "{}",
            problem.message
        );
        assert!(!Reason::EmptyBlob.is_fixed_by_signing());
        assert!(
            Reason::EmptyBlob
                .remedy(&About::registry("r.example"))
                .unwrap()
                .contains("0 bytes")
        );
        assert_eq!(
            serde_json::to_value(Reason::OtherDigest).unwrap(),
            "other_digest"
        );
    }

    #[test]
    fn every_reason_has_its_own_label_and_the_serialized_form_is_the_label() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        for reason in Reason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.label());
        }
        labels.push(VERIFIED_LABEL);
        let count = labels.len();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), count, "labels repeat: {labels:?}");
    }

    /// The metrics' reason label set is documented from the type: README's table names every label.
    #[test]
    fn the_readme_documents_every_reason_label() {
        let readme = include_str!("../README.md");
        for label in Reason::ALL
            .iter()
            .map(|r| r.label())
            .chain([VERIFIED_LABEL])
        {
            assert!(
                readme.contains(&format!("`{label}`")),
                "README.md does not document the reason label `{label}`"
            );
        }
    }
}
