//! What the verification tests share: policies compiled as the server compiles them, the engine run on
//! one image, assertions on its verdict, and the legacy `.sig` manifests cosign stores (read, altered,
//! written back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{CompiledPolicy, ImageSigningPolicy, compile};
use registryx_guard::refusal::Reason;
use registryx_guard::registry::ImageRef;
use registryx_guard::verify::{ImageVerdict, Proof, Verifier, VerifierSettings};
use serde_json::Value;

use super::cosign::{Cosign, Format};
use super::policy::PolicySpec;
use super::registry::{OCI_MANIFEST, PushedImage, Registry};
use super::rekor::hashedrekord;
use sha2::{Digest as _, Sha256};

/// How long [`verify`] gives the engine: far more than a loopback registry needs.
pub const BUDGET: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------
// Policies

/// Parses and compiles a policy as the server does (no cluster, so no Secrets); panics with the YAML
/// when it does not.
pub fn compile_policy(yaml: &str) -> Arc<CompiledPolicy> {
    registryx_guard::tls::install_crypto_provider();
    let parsed: ImageSigningPolicy =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Arc::new(
        compile(&parsed, &NoSecrets, "registryx-guard").unwrap_or_else(|e| panic!("{e}\n{yaml}")),
    )
}

/// [`PolicySpec::key`] with `cosign`'s public key, compiled.
pub fn key_policy(host: &str, cosign: &Cosign) -> Arc<CompiledPolicy> {
    PolicySpec::key(host, &cosign.public_key_pem()).compile()
}

// ---------------------------------------------------------------------------------------------------
// Running the engine

/// A verifier with the default settings and no registry credentials.
pub fn new_verifier() -> Verifier {
    Verifier::new(VerifierSettings::default(), None)
}

/// Verifies `reference` with a fresh verifier within [`BUDGET`].
pub async fn verify(reference: &str, policy: &Arc<CompiledPolicy>) -> ImageVerdict {
    verify_within(reference, policy, BUDGET).await
}

/// Verifies `reference` with a fresh verifier within `budget`.
pub async fn verify_within(
    reference: &str,
    policy: &Arc<CompiledPolicy>,
    budget: Duration,
) -> ImageVerdict {
    verify_with(&new_verifier(), reference, policy, budget).await
}

/// Verifies `reference` with `verifier` (and its caches) within `budget`. As in admission, the policy
/// is passed only if it governs the image, so an ungoverned image costs no registry call.
pub async fn verify_with(
    verifier: &Verifier,
    reference: &str,
    policy: &Arc<CompiledPolicy>,
    budget: Duration,
) -> ImageVerdict {
    let image = ImageRef::parse(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
    let governing: Vec<_> = [policy.clone()]
        .into_iter()
        .filter(|p| p.governs(&image))
        .collect();
    // Both stages, as `registryx-guard verify` runs them: signatures, then Rego.
    registryx_guard::decide::decide(
        verifier,
        &image,
        &governing,
        &registryx_guard::decide::RequestContext::default(),
        registryx_guard::verify::Freshness::Cached,
        Instant::now() + budget,
    )
    .await
}

// ---------------------------------------------------------------------------------------------------
// Verdicts

/// Admitted because some policy governs the image and every policy has a verified authority (not
/// merely because nothing governs it).
#[track_caller]
pub fn assert_admitted(verdict: &ImageVerdict) {
    assert!(verdict.admitted(), "refused: {verdict:#?}");
    assert!(
        !verdict.policies.is_empty(),
        "no policy governs: {verdict:#?}"
    );
    assert!(
        verdict
            .policies
            .iter()
            .all(|p| p.authorities.iter().any(|e| e.verified())),
        "{verdict:#?}"
    );
}

/// Why `verdict` refused: the reason of the first enforcing policy that failed; `None` when it
/// admitted.
pub fn refusal_reason(verdict: &ImageVerdict) -> Option<Reason> {
    verdict.reason()
}

/// Refused for `reason`.
#[track_caller]
pub fn assert_refused(verdict: &ImageVerdict, reason: Reason) {
    assert!(!verdict.admitted(), "admitted: {verdict:#?}");
    assert_eq!(
        refusal_reason(verdict),
        Some(reason),
        "reasons:\n{}",
        reasons(verdict)
    );
}

/// Refused for `reason`, with every one of `needles` somewhere in the policies' reasons: for the
/// words a user reads (the host, the status, the field to set).
#[track_caller]
pub fn assert_refused_saying(verdict: &ImageVerdict, reason: Reason, needles: &[&str]) {
    assert_refused(verdict, reason);
    assert_refused_because(verdict, needles);
}

/// Refused, with every one of `needles` somewhere in the policies' reasons.
#[track_caller]
pub fn assert_refused_because(verdict: &ImageVerdict, needles: &[&str]) {
    assert!(!verdict.admitted(), "admitted: {verdict:#?}");
    let reasons = reasons(verdict);
    for needle in needles {
        assert!(
            reasons.contains(needle),
            "expected {needle:?} among the reasons:\n{reasons}"
        );
    }
}

/// Every policy's reasons, one a line.
pub fn reasons(verdict: &ImageVerdict) -> String {
    verdict
        .policies
        .iter()
        .flat_map(|p| p.messages().iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The proof of the first policy's first authority.
#[track_caller]
pub fn first_proof(verdict: &ImageVerdict) -> &Proof {
    verdict
        .policies
        .first()
        .and_then(|p| p.authorities.first())
        .and_then(|e| e.proof())
        .unwrap_or_else(|| panic!("no proof: {verdict:#?}"))
}

// ---------------------------------------------------------------------------------------------------
// Legacy signatures as stored

/// `team/app:v1` (its digest made by `seed`, see [`Registry::push_image`]) in a fresh distribution
/// registry, signed in the legacy format by cosign with a fresh key pair.
pub async fn legacy_signed_image(seed: &str) -> (Registry, Cosign, PushedImage) {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", seed).await;
    cosign.sign(&image.reference, Format::Legacy);
    (registry, cosign, image)
}

/// The tag of the legacy signature manifest of `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// The `.sig` manifest cosign pushed for `image`.
pub async fn signature_manifest(registry: &Registry, image: &PushedImage) -> Value {
    let tag = signature_tag(&image.digest);
    let (status, _, _, body) = registry.get_manifest(&image.repository, &tag).await;
    assert_eq!(status, 200, "no {tag} in {}", image.repository);
    serde_json::from_slice(&body).expect("signature manifest JSON")
}

/// Puts `manifest` under `image`'s `.sig` tag, replacing what is there.
pub async fn put_signature_manifest(registry: &Registry, image: &PushedImage, manifest: &Value) {
    registry
        .push_manifest(
            &image.repository,
            &signature_tag(&image.digest),
            OCI_MANIFEST,
            &serde_json::to_vec(manifest).unwrap(),
        )
        .await;
}

/// The bytes of a blob.
pub async fn get_blob(registry: &Registry, repository: &str, digest: &str) -> Vec<u8> {
    let url = registry.url(&format!("/v2/{repository}/blobs/{digest}"));
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().await.expect("blob body").to_vec()
}

/// `signature` (base64) with its last byte flipped: a signature of nothing, same length.
pub fn altered_signature(signature: &str) -> String {
    let mut bytes = base64_decode(signature);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    base64_encode(&bytes)
}

pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{text:?} is not base64: {e}"))
}

const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const REKOR_BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

/// A legacy signature as cosign stored it, and what a log entry records of it.
pub struct StoredSignature {
    /// The `.sig` manifest.
    pub manifest: Value,
    /// Hex SHA-256 of the signed simple-signing payload.
    pub payload_sha256: String,
    /// The base64 signature annotation.
    pub signature: String,
}

impl StoredSignature {
    pub async fn read(registry: &Registry, image: &PushedImage) -> StoredSignature {
        let manifest = signature_manifest(registry, image).await;
        let layer = &manifest["layers"][0];
        let payload = get_blob(
            registry,
            &image.repository,
            layer["digest"].as_str().expect("layer digest"),
        )
        .await;
        let signature = layer["annotations"][SIGNATURE_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("no signature annotation: {manifest}"))
            .to_owned();
        StoredSignature {
            payload_sha256: hex::encode(Sha256::digest(&payload)),
            manifest,
            signature,
        }
    }

    /// The honest entry body of this signature made with `public_key_pem`.
    pub fn body(&self, public_key_pem: &str) -> String {
        hashedrekord(&self.payload_sha256, &self.signature, public_key_pem)
    }

    /// Puts the signature back under `image`'s `.sig` tag with `bundle` as its Rekor bundle annotation.
    pub async fn attach(&self, registry: &Registry, image: &PushedImage, bundle: &str) {
        let mut manifest = self.manifest.clone();
        manifest["layers"][0]["annotations"][REKOR_BUNDLE_ANNOTATION] = bundle.into();
        put_signature_manifest(registry, image, &manifest).await;
    }
}
