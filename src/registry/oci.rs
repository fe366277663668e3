//! The OCI content the registry client reads: media types, and descriptors, image indexes and image
//! manifests as oci-spec defines them, parsed from bytes already read under their size cap; sha256
//! digests of what was read.
//!
//! oci-spec's types hold every field the image spec requires (`schemaVersion`, each descriptor's
//! `mediaType`, `digest` and `size`): registries and cosign write all of them, and an answer without them
//! is refused as malformed (a problem reported with the refusal, never an admission).

use std::sync::LazyLock;

use oci_spec::image::ToDockerV2S2 as _;
pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

/// The `Accept` of a manifest request: OCI's manifest and index, and Docker's equivalents.
pub(crate) static ACCEPT_MANIFESTS: LazyLock<String> = LazyLock::new(|| {
    let oci = [MediaType::ImageManifest, MediaType::ImageIndex];
    let docker = oci.iter().filter_map(|t| t.to_docker_v2s2().ok());
    oci.iter()
        .map(AsRef::as_ref)
        .chain(docker)
        .collect::<Vec<&str>>()
        .join(", ")
});

/// Whether a `Content-Type` (or a document's own `mediaType`) is OCI's image index.
pub fn is_oci_index(media_type: &str) -> bool {
    media_type.starts_with(MediaType::ImageIndex.as_ref())
}

/// Whether a `Content-Type` (or a document's own `mediaType`) is an image index: OCI's, or Docker's
/// manifest list.
pub fn is_index(media_type: &str) -> bool {
    is_oci_index(media_type)
        || MediaType::ImageIndex
            .to_docker_v2s2()
            .is_ok_and(|list| media_type.starts_with(list))
}

/// An image index from bytes read under their cap; an error says where the JSON broke and never what
/// it holds ([`crate::untrusted::json_error`]).
pub fn parse_index(bytes: &[u8]) -> Result<ImageIndex, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("the image index {}", crate::untrusted::json_error(&e)))
}

/// The `sha256:<hex>` digest of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `value` is `sha256:` and 64 hex digits.
pub(crate) fn is_sha256_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_the_specs() {
        assert_eq!(
            ACCEPT_MANIFESTS.as_str(),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json"
        );
        assert!(is_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(is_index(
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
        ));
        assert!(!is_oci_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
    }

    #[test]
    fn index_errors_never_quote_the_answer() {
        let error =
            parse_index(br#"{"schemaVersion":2,"manifests":[{"digest":"secret"}]}"#).unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        assert!(error.starts_with("the image index is JSON of another shape"));
    }
}
