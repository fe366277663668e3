//! Signature discovery: everything cosign may have stored for one digest, fetched once and shared by
//! every authority of every policy.
//!
//! Three places are read at once, so that the legacy path costs three sequential round trips (resolve;
//! `.sig` manifest; payloads): the OCI 1.1 referrers API, cosign's legacy `sha256-<hex>.sig` tag, and the
//! `sha256-<hex>` fallback tag that cosign's registry library maintains when the registry has no
//! referrers API.

use crate::refusal::{Failure, Reason};
use std::time::Instant;

use futures::future::join_all;

use crate::registry::{
    Descriptor, ErrorKind, ImageManifest, ImageRef, MediaType, RegistryClient, RegistryError, Step,
};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
/// More signatures than this on one image are not read: the rest would only cost time.
const MAX_SIGNATURES: usize = 32;

/// What discovery found for one digest.
#[derive(Clone, Debug, Default)]
pub struct SignatureSet {
    pub signatures: Vec<FoundSignature>,
    /// The layers of the legacy `sha256-<hex>.att` tag, read only when an authority requires
    /// attestations. Bundle-format attestations are referrers, among `signatures`.
    pub attestations: Vec<LegacyAttestation>,
    /// Reads that failed; reported when no authority verifies, since they may explain why.
    pub problems: Vec<Failure>,
    /// When nothing at all is stored for the digest: digests of the repository that cosign signed (a
    /// `sha256-<hex>.sig` tag) and that no tag names any more, a few at most. That is what a tag
    /// re-pushed without re-signing leaves behind; a signed `v1` beside an unsigned `v2` is not it.
    pub signed_elsewhere: Vec<String>,
}

impl SignatureSet {
    /// About how many bytes the set holds, for the cache's weigher.
    pub fn weight(&self) -> usize {
        let signatures: usize = self
            .signatures
            .iter()
            .map(|found| match found {
                FoundSignature::Legacy(legacy) => {
                    legacy.payload.len()
                        + legacy.signature.len()
                        + legacy.certificate.as_ref().map_or(0, String::len)
                        + legacy.chain.as_ref().map_or(0, String::len)
                        + legacy.rekor_bundle.as_ref().map_or(0, String::len)
                        + 128
                }
                FoundSignature::Bundle(bundle) => bundle.bundle.len() + 128,
            })
            .sum();
        let attestations: usize = self
            .attestations
            .iter()
            .map(|a| {
                a.envelope.len()
                    + a.certificate.as_ref().map_or(0, String::len)
                    + a.chain.as_ref().map_or(0, String::len)
                    + a.rekor_bundle.as_ref().map_or(0, String::len)
                    + 128
            })
            .sum();
        256 + signatures
            + attestations
            + self
                .problems
                .iter()
                .map(|p| p.message.len() + 32)
                .sum::<usize>()
            + self.signed_elsewhere.len() * 80
    }
}

/// Tags read to find other signed digests: one page, so one request, on the refusal path only.
const TAGS_PAGE: usize = 1000;
/// Ordinary tags resolved to see which signed digests they still name; a repository with more gives
/// no hint (its refusals say "no signature", which is true too).
const MAX_TAGS_RESOLVED: usize = 16;
/// Tag resolutions in flight at once for the hint: the registry's request slots stay free for
/// verifications.
const RESOLUTIONS_IN_FLIGHT: usize = 4;
/// Other signed digests named in a refusal.
const MAX_SIGNED_ELSEWHERE: usize = 3;

/// Fills [`SignatureSet::signed_elsewhere`] when the set is empty and every read succeeded: lists the
/// repository's tags, and resolves the ordinary ones to drop the signed digests that some tag still
/// names. The image's own tag is not resolved: it names `digest`, which is not among them. A failed
/// listing or resolution (many registries refuse listings to pull-only credentials) only means the
/// hint is not given.
pub async fn find_signed_elsewhere(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    set: &mut SignatureSet,
    deadline: Instant,
) {
    // Only a tag can have been re-pushed: a reference by digest gets no hint (and costs no listing).
    if !set.signatures.is_empty()
        || !set.problems.is_empty()
        || image.tag.is_none()
        || image.digest.is_some()
    {
        return;
    }
    // Only a whole listing can show that no tag names a signed digest any more.
    let Ok((tags, true)) = client
        .list_tags(&image.repository, TAGS_PAGE, deadline)
        .await
    else {
        return;
    };
    let mut signed: Vec<String> = tags
        .iter()
        .filter_map(|tag| signed_digest_of(tag))
        .filter(|signed| signed != digest)
        .collect();
    // cosign's own tags (signatures, attestations, SBOMs, referrers fallbacks) all start so.
    // Tags come from the registry: only well-formed ones go into a request path.
    let ordinary: Vec<&String> = tags
        .iter()
        .filter(|tag| {
            !tag.starts_with("sha256-")
                && Some(*tag) != image.tag.as_ref()
                && crate::registry::grammar::is_tag(tag)
        })
        .collect();
    if signed.is_empty() || ordinary.len() > MAX_TAGS_RESOLVED {
        return;
    }
    let in_flight = tokio::sync::Semaphore::new(RESOLUTIONS_IN_FLIGHT);
    let resolutions = join_all(ordinary.into_iter().map(|tag| {
        let tagged = ImageRef {
            tag: Some(tag.clone()),
            digest: None,
            ..image.clone()
        };
        let in_flight = &in_flight;
        async move {
            let _slot = in_flight.acquire().await;
            client.resolve(&tagged, deadline).await
        }
    }))
    .await;
    for resolved in resolutions {
        let Ok(resolved) = resolved else {
            return;
        };
        signed.retain(|d| *d != resolved.digest);
    }
    signed.truncate(MAX_SIGNED_ELSEWHERE);
    set.signed_elsewhere = signed;
}

/// `sha256-<64 hex>.sig` -> `sha256:<hex>`.
fn signed_digest_of(tag: &str) -> Option<String> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| format!("sha256:{hex}"))
}

#[derive(Clone, Debug)]
pub enum FoundSignature {
    Legacy(LegacySignature),
    Bundle(BundleSignature),
}

/// One layer of a `sha256-<hex>.sig` manifest.
#[derive(Clone, Debug)]
pub struct LegacySignature {
    pub layer_digest: String,
    /// The simple-signing payload: the exact bytes that were signed.
    pub payload: Vec<u8>,
    /// Base64 of the signature.
    pub signature: String,
    pub certificate: Option<String>,
    pub chain: Option<String>,
    /// The Rekor bundle JSON (SET and entry), if the signature was logged.
    pub rekor_bundle: Option<String>,
}

/// One layer of a `sha256-<hex>.att` manifest: a DSSE envelope.
#[derive(Clone, Debug)]
pub struct LegacyAttestation {
    pub layer_digest: String,
    /// The DSSE envelope's JSON.
    pub envelope: Vec<u8>,
    pub certificate: Option<String>,
    pub chain: Option<String>,
    /// The Rekor bundle JSON (SET and entry), if the attestation was logged: the same
    /// `dev.sigstore.cosign/bundle` annotation as on a `.sig` layer, checked the same way.
    pub rekor_bundle: Option<String>,
}

/// A sigstore bundle stored as a referrer of the image.
#[derive(Clone, Debug)]
pub struct BundleSignature {
    pub manifest_digest: String,
    pub bundle: Vec<u8>,
}

/// Reads every signature stored for `digest` in `repository`, and with `attestations` the legacy
/// `.att` tag too, in the same pass (bundle-format attestations are referrers, read anyway).
pub async fn discover(
    client: &RegistryClient,
    repository: &str,
    digest: &str,
    attestations: bool,
    deadline: Instant,
) -> Result<SignatureSet, RegistryError> {
    let tag = digest.replace(':', "-");
    let legacy_tag = format!("{tag}.sig");
    let attestation_tag = format!("{tag}.att");
    // The fallback tag is read at once too: on a registry without the referrers API that saves a round
    // trip, on one with it the answer is a cheap 404 or ignored.
    // Each manifest is parsed and its bytes dropped inside its own read: bytes held while a sibling
    // read waits would hold the registry's share of the read budget that sibling waits for.
    let fallback_step = Step::ReadFallbackTag {
        repository: repository.to_owned(),
        tag: tag.clone(),
    };
    let (referrers, legacy, fallback, attested) = futures::join!(
        client.referrers(repository, digest, deadline),
        async {
            let manifest = client
                .get_manifest(repository, &legacy_tag, deadline)
                .await?;
            Ok::<_, RegistryError>(serde_json::from_slice::<ImageManifest>(&manifest.bytes))
        },
        async {
            let index = client.get_manifest(repository, &tag, deadline).await?;
            Ok::<_, RegistryError>(client.index_manifests(&fallback_step, &index))
        },
        async {
            if !attestations {
                return Ok(None);
            }
            let manifest = client
                .get_manifest(repository, &attestation_tag, deadline)
                .await?;
            Ok::<_, RegistryError>(Some(serde_json::from_slice::<ImageManifest>(
                &manifest.bytes,
            )))
        },
    );
    let mut set = SignatureSet::default();

    // A registry that hangs or refuses is reported whole: without its answer nothing can be said.
    let referrers = match referrers {
        Ok(referrers) => referrers,
        // No registry answered the referrers API: as for a registry without it, the fallback tag
        // is read (and reports the same failure), so that a closed port and a web server that
        // answers 404 read the same.
        Err(RegistryError {
            kind: ErrorKind::NoRegistry { .. } | ErrorKind::RedirectRefused { .. },
            ..
        }) => None,
        Err(
            error @ RegistryError {
                kind:
                    ErrorKind::Timeout { .. }
                    | ErrorKind::Denied { .. }
                    | ErrorKind::Unauthorized { .. },
                ..
            },
        ) => return Err(error),
        // A list that does not parse (oci-spec is strict: one sloppy descriptor spoils it) is
        // reported, and cosign's fallback tag is read as for a registry without the API, so that
        // signatures stored there are still found.
        Err(
            error @ RegistryError {
                kind: ErrorKind::Malformed { .. },
                ..
            },
        ) => {
            set.problems.push(Failure::from(&error));
            None
        }
        Err(error) => {
            set.problems.push(Failure::from(&error));
            Some(Vec::new())
        }
    };
    let referrers = match referrers {
        Some(list) => list,
        None => match fallback {
            Ok(listed) => listed.unwrap_or_else(|e| {
                set.problems.push(Failure::from(&e));
                Vec::new()
            }),
            Err(error) if error.is_not_found() => Vec::new(),
            Err(error) if error.is_timeout() => return Err(error),
            Err(error) => {
                set.problems.push(Failure::from(&error));
                Vec::new()
            }
        },
    };

    let legacy_layers = match legacy {
        Ok(parsed) => match parsed {
            Ok(mut manifest) => std::mem::take(manifest.layers_mut()),
            Err(error) => {
                set.problems
                    .push(unreadable_manifest(client, &legacy_tag, &error));
                Vec::new()
            }
        },
        Err(
            error @ RegistryError {
                kind: ErrorKind::Timeout { .. } | ErrorKind::Denied { .. },
                ..
            },
        ) => {
            return Err(error);
        }
        Err(error) if error.is_not_found() => Vec::new(),
        Err(error) => {
            set.problems.push(Failure::from(&error));
            Vec::new()
        }
    };

    let attestation_layers = match attested {
        Ok(None) => Vec::new(),
        Ok(Some(Ok(mut manifest))) => std::mem::take(manifest.layers_mut()),
        Ok(Some(Err(error))) => {
            set.problems
                .push(unreadable_manifest(client, &attestation_tag, &error));
            Vec::new()
        }
        Err(error) if error.is_timeout() => return Err(error),
        Err(error) if error.is_not_found() => Vec::new(),
        Err(error) => {
            set.problems.push(Failure::from(&error));
            Vec::new()
        }
    };
    let attestation_reads = attestation_layers
        .into_iter()
        .filter(|layer| layer.media_type().as_ref() == DSSE_ENVELOPE)
        .take(MAX_SIGNATURES)
        .map(|layer| read_attestation(client, repository, layer, deadline));

    let legacy_reads = legacy_layers
        .into_iter()
        .filter(|layer| layer.media_type().as_ref() == SIMPLE_SIGNING)
        .take(MAX_SIGNATURES)
        .map(|layer| read_legacy(client, repository, layer, deadline));
    let bundle_reads = referrers
        .into_iter()
        .take(MAX_SIGNATURES)
        .map(|descriptor| read_bundle(client, repository, descriptor, deadline));
    let (legacy, bundles, attestations) = futures::join!(
        join_all(legacy_reads),
        join_all(bundle_reads),
        join_all(attestation_reads)
    );
    for result in attestations {
        match result {
            Ok(attestation) => set.attestations.push(attestation),
            Err(error) if error.is_timeout() => return Err(error),
            Err(error) => set.problems.push(Failure::from(&error)),
        }
    }
    for result in legacy.into_iter().chain(bundles.into_iter().flatten()) {
        match result {
            Ok(signature) => set.signatures.push(signature),
            Err(error) if error.is_timeout() => return Err(error),
            Err(error) => set.problems.push(Failure::from(&error)),
        }
    }
    Ok(set)
}

/// A `.sig` or `.att` manifest that does not parse.
fn unreadable_manifest(client: &RegistryClient, tag: &str, error: &serde_json::Error) -> Failure {
    Failure {
        reason: Reason::SignatureUnreadable,
        message: format!(
            "{}: the manifest of {tag} {}",
            client.registry(),
            crate::untrusted::json_error(error)
        ),
    }
}

/// A layer's digest, annotations and blob.
async fn read_layer(
    client: &RegistryClient,
    repository: &str,
    layer: Descriptor,
    deadline: Instant,
) -> Result<(String, std::collections::HashMap<String, String>, Vec<u8>), RegistryError> {
    let digest = layer.digest().to_string();
    let annotations = layer.annotations().clone().unwrap_or_default();
    let blob = client.get_blob(repository, &digest, deadline).await?;
    Ok((digest, annotations, blob))
}

async fn read_legacy(
    client: &RegistryClient,
    repository: &str,
    layer: Descriptor,
    deadline: Instant,
) -> Result<FoundSignature, RegistryError> {
    let (digest, annotations, payload) = read_layer(client, repository, layer, deadline).await?;
    let Some(signature) = annotations.get(ANNOTATION_SIGNATURE).cloned() else {
        return Err(RegistryError {
            registry: client.registry().to_owned(),
            step: Box::new(Step::ReadSignatureLayer { digest }),
            kind: ErrorKind::Malformed {
                detail: format!("the layer has no {ANNOTATION_SIGNATURE} annotation"),
            },
        });
    };
    let non_empty = |key: &str| non_empty_annotation(&annotations, key);
    Ok(FoundSignature::Legacy(LegacySignature {
        layer_digest: digest,
        payload,
        signature,
        certificate: non_empty(ANNOTATION_CERTIFICATE),
        chain: non_empty(ANNOTATION_CHAIN),
        rekor_bundle: non_empty(ANNOTATION_BUNDLE),
    }))
}

/// An annotation's value, unless it is missing or blank (cosign writes empty ones).
fn non_empty_annotation(
    annotations: &std::collections::HashMap<String, String>,
    key: &str,
) -> Option<String> {
    annotations
        .get(key)
        .filter(|v| !v.trim().is_empty())
        .cloned()
}

async fn read_attestation(
    client: &RegistryClient,
    repository: &str,
    layer: Descriptor,
    deadline: Instant,
) -> Result<LegacyAttestation, RegistryError> {
    let (digest, annotations, envelope) = read_layer(client, repository, layer, deadline).await?;
    let non_empty = |key: &str| non_empty_annotation(&annotations, key);
    Ok(LegacyAttestation {
        layer_digest: digest,
        envelope,
        certificate: non_empty(ANNOTATION_CERTIFICATE),
        chain: non_empty(ANNOTATION_CHAIN),
        rekor_bundle: non_empty(ANNOTATION_BUNDLE),
    })
}

/// Reads a referrer and, when it is a sigstore bundle, its bundle layer. Registries list referrers under
/// varying artifact types (some under the config's media type), so the manifest itself decides.
async fn read_bundle(
    client: &RegistryClient,
    repository: &str,
    descriptor: Descriptor,
    deadline: Instant,
) -> Option<Result<FoundSignature, RegistryError>> {
    let listed = descriptor
        .artifact_type()
        .as_ref()
        .map(MediaType::as_ref)
        .unwrap_or_default();
    let plausible = listed.is_empty()
        || listed.starts_with(BUNDLE_PREFIX)
        || listed == "application/vnd.oci.empty.v1+json";
    if !plausible {
        return None; // an SBOM, an attestation of another kind, ...
    }
    let manifest = match client
        .get_manifest(repository, descriptor.digest().as_ref(), deadline)
        .await
    {
        Ok(manifest) => manifest,
        Err(error) => return Some(Err(error)),
    };
    let parsed: ImageManifest = match serde_json::from_slice(&manifest.bytes) {
        Ok(parsed) => parsed,
        Err(_) => return None,
    };
    let layer = parsed
        .layers()
        .iter()
        .find(|layer| layer.media_type().as_ref().starts_with(BUNDLE_PREFIX))?;
    if parsed
        .artifact_type()
        .as_ref()
        .is_some_and(|t| !t.as_ref().starts_with(BUNDLE_PREFIX))
        && parsed.layers().len() != 1
    {
        return None;
    }
    Some(
        client
            .get_blob(repository, layer.digest().as_ref(), deadline)
            .await
            .map(|bundle| {
                FoundSignature::Bundle(BundleSignature {
                    manifest_digest: descriptor.digest().to_string(),
                    bundle,
                })
            }),
    )
}
