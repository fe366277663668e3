//! The verification engine against real registries and real cosign signatures: what must be admitted,
//! and each way a signature can be missing, wrong, or forged that must be refused with its reason.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use registryx_guard::policy::{CompiledPolicy, ImageSigningPolicy, compile};
use registryx_guard::registry::ImageRef;
use registryx_guard::verify::authority::NoSecrets;
use registryx_guard::verify::{ImageVerdict, Verifier, VerifierSettings};
use support::cosign::{Cosign, Format};
use support::registry::{OCI_MANIFEST, PushedImage, Registry};

/// A key-based policy over every image of `registry`, plain HTTP.
fn key_policy(registry: &Registry, cosign: &Cosign, extra: &str) -> Arc<CompiledPolicy> {
    let pem = cosign.public_key_pem().replace('\n', "\n        ");
    policy(&format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: signed}}\nspec:\n  images: ['{}/**']\n  \
         registry: {{insecure: true}}\n  authorities:\n  - name: release\n    key:\n      data: |\n        {pem}\n{extra}",
        registry.host
    ))
}

fn policy(yaml: &str) -> Arc<CompiledPolicy> {
    registryx_guard::tls::install_crypto_provider();
    let parsed: ImageSigningPolicy =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Arc::new(compile(&parsed, &NoSecrets, "registryx-guard").unwrap())
}

async fn verify_with(
    verifier: &Verifier,
    reference: &str,
    policy: &Arc<CompiledPolicy>,
) -> ImageVerdict {
    let image = ImageRef::parse(reference).unwrap();
    let governing: Vec<_> = [policy.clone()]
        .into_iter()
        .filter(|p| p.governs(&image))
        .collect();
    verifier
        .verify(&image, &governing, Instant::now() + Duration::from_secs(20))
        .await
}

async fn verify(reference: &str, policy: &Arc<CompiledPolicy>) -> ImageVerdict {
    verify_with(
        &Verifier::new(VerifierSettings::default(), None),
        reference,
        policy,
    )
    .await
}

fn assert_admitted(verdict: &ImageVerdict) {
    assert!(verdict.admitted(), "refused: {verdict:#?}");
    assert!(
        verdict
            .policies
            .iter()
            .all(|p| p.authorities.iter().any(|e| e.verified)),
        "{verdict:#?}"
    );
}

#[track_caller]
fn assert_refused_because(verdict: &ImageVerdict, reason: &str) {
    assert!(!verdict.admitted(), "admitted: {verdict:#?}");
    let reasons = verdict
        .policies
        .iter()
        .flat_map(|p| p.reasons.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        reasons.contains(reason),
        "expected {reason:?} among the reasons:\n{reasons}"
    );
}

/// The `.sig` manifest cosign pushed for `image`: (tag, manifest JSON).
async fn signature_manifest(
    registry: &Registry,
    image: &PushedImage,
) -> (String, serde_json::Value) {
    let tag = format!("{}.sig", image.digest.replace(':', "-"));
    let (status, _, _, body) = registry.get_manifest(&image.repository, &tag).await;
    assert_eq!(status, 200, "no {tag}");
    (tag, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn admits_a_key_signed_legacy_signature_with_its_evidence() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "legacy").await;
    cosign.sign(&image.reference, Format::Legacy);

    let verdict = verify(&image.reference, &key_policy(&registry, &cosign, "")).await;
    assert_admitted(&verdict);
    assert_eq!(verdict.digest.as_deref(), Some(image.digest.as_str()));
    let evidence = &verdict.policies[0].authorities[0];
    let proof = evidence.proof.as_ref().unwrap();
    assert_eq!(proof.format, "legacy");
    assert!(
        proof
            .key_id
            .as_deref()
            .is_some_and(|k| k.starts_with("sha256:"))
    );
}

#[tokio::test]
async fn admits_a_key_signed_bundle_stored_as_a_referrer() {
    let registry = Registry::with_referrers();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "bundle").await;
    cosign.sign(&image.reference, Format::Bundle);

    let verdict = verify(&image.reference, &key_policy(&registry, &cosign, "")).await;
    assert_admitted(&verdict);
    assert_eq!(
        verdict.policies[0].authorities[0]
            .proof
            .as_ref()
            .unwrap()
            .format,
        "bundle"
    );
}

#[tokio::test]
async fn admits_a_bundle_behind_the_fallback_tag_of_a_registry_without_referrers() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "fallback").await;
    cosign.sign(&image.reference, Format::Bundle);
    assert!(
        registry
            .tags("team/app")
            .await
            .contains(&image.digest.replace(':', "-")),
        "cosign wrote no fallback tag"
    );

    assert_admitted(&verify(&image.reference, &key_policy(&registry, &cosign, "")).await);
}

#[tokio::test]
async fn admits_an_image_given_by_digest_without_resolving_a_tag() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "by-digest").await;
    cosign.sign(&image.reference, Format::Legacy);

    let verifier = Verifier::new(VerifierSettings::default(), None);
    let verdict = verify_with(
        &verifier,
        &image.by_digest(),
        &key_policy(&registry, &cosign, ""),
    )
    .await;
    assert_admitted(&verdict);
    // No HEAD: the referrers list, the .sig manifest, the fallback tag, and one payload.
    assert_eq!(verifier.registry_requests(), 4);
}

#[tokio::test]
async fn refuses_an_unsigned_image_naming_digest_and_remedy() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "unsigned").await;

    let verdict = verify(&image.reference, &key_policy(&registry, &cosign, "")).await;
    assert_refused_because(
        &verdict,
        &format!(
            "no signature found for {} in {}/team/app",
            image.digest, registry.host
        ),
    );
    let remedy = verdict.policies[0].remedy.as_deref().unwrap();
    assert!(
        remedy.contains("cosign sign --key") && remedy.contains(&image.by_digest()),
        "{remedy}"
    );
}

#[tokio::test]
async fn refuses_a_signature_made_with_another_key() {
    let registry = Registry::distribution();
    let (trusted, other) = (Cosign::with_new_key_pair(), Cosign::with_new_key_pair());
    let image = registry.push_image("team/app", "v1", "other-key").await;
    other.sign(&image.reference, Format::Legacy);
    let verdict = verify(&image.reference, &key_policy(&registry, &trusted, "")).await;
    assert_refused_because(&verdict, "does not verify with key sha256:");

    let bundles = Registry::with_referrers();
    let image = bundles
        .push_image("team/app", "v1", "other-key-bundle")
        .await;
    other.sign(&image.reference, Format::Bundle);
    assert_refused_because(
        &verify(&image.reference, &key_policy(&bundles, &trusted, "")).await,
        "does not verify with key",
    );
}

#[tokio::test]
async fn refuses_a_valid_signature_copied_from_another_image() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "copied-from")
        .await;
    let target = registry.push_image("team/app", "target", "copied-to").await;
    cosign.sign(&signed.reference, Format::Legacy);

    // Put the signed image's .sig manifest, byte for byte, under the target's signature tag.
    let (_, manifest) = signature_manifest(&registry, &signed).await;
    let copy_tag = format!("{}.sig", target.digest.replace(':', "-"));
    registry
        .push_manifest(
            "team/app",
            &copy_tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;

    let verdict = verify(&target.reference, &key_policy(&registry, &cosign, "")).await;
    assert_refused_because(
        &verdict,
        &format!(
            "the signature is for {}, not for this image's {}",
            signed.digest, target.digest
        ),
    );
}

#[tokio::test]
async fn refuses_a_tag_moved_to_an_unsigned_image_after_signing() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry.push_image("team/app", "v1", "before").await;
    cosign.sign(&signed.reference, Format::Legacy);
    let policy = key_policy(&registry, &cosign, "");
    assert_admitted(&verify(&signed.reference, &policy).await);

    let moved = registry.push_image("team/app", "v1", "after").await;
    assert_ne!(moved.digest, signed.digest);
    let verdict = verify(&moved.reference, &policy).await;
    assert_eq!(verdict.digest.as_deref(), Some(moved.digest.as_str()));
    assert_refused_because(
        &verdict,
        &format!("no signature found for {}", moved.digest),
    );
}

#[tokio::test]
async fn refuses_altered_signature_bytes() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry
        .push_image("team/app", "v1", "altered-signature")
        .await;
    cosign.sign(&image.reference, Format::Legacy);

    let (tag, mut manifest) = signature_manifest(&registry, &image).await;
    let annotation =
        &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let mut signature = base64_decode(annotation.as_str().unwrap());
    let last = signature.len() - 1;
    signature[last] ^= 0x01;
    *annotation = serde_json::Value::String(base64_encode(&signature));
    registry
        .push_manifest(
            "team/app",
            &tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;

    assert_refused_because(
        &verify(&image.reference, &key_policy(&registry, &cosign, "")).await,
        "does not verify with key",
    );
}

#[tokio::test]
async fn refuses_an_altered_payload() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry
        .push_image("team/app", "v1", "altered-payload")
        .await;
    cosign.sign(&image.reference, Format::Legacy);

    let (tag, mut manifest) = signature_manifest(&registry, &image).await;
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let payload = reqwest::get(registry.url(&format!("/v2/team/app/blobs/{layer_digest}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let altered = String::from_utf8(payload.to_vec())
        .unwrap()
        .replace("\"optional\":null", "\"optional\":{\"approved\":\"yes\"}");
    assert_ne!(
        altered.as_bytes(),
        payload.as_ref(),
        "the payload did not change"
    );
    let altered_digest = registry.push_blob("team/app", altered.as_bytes()).await;
    manifest["layers"][0]["digest"] = altered_digest.into();
    manifest["layers"][0]["size"] = altered.len().into();
    registry
        .push_manifest(
            "team/app",
            &tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;

    assert_refused_because(
        &verify(&image.reference, &key_policy(&registry, &cosign, "")).await,
        "does not verify with key",
    );
}

#[tokio::test]
async fn multi_arch_indexes_follow_the_policy_choice() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let amd64 = registry.push_image("team/app", "amd64", "amd64").await;
    let arm64 = registry.push_image("team/app", "arm64", "arm64").await;
    let index = registry
        .push_index("team/app", "v1", &[("amd64", &amd64), ("arm64", &arm64)])
        .await;
    cosign.sign(&index.reference, Format::Legacy);

    // What cosign signs by default: the index digest.
    assert_admitted(&verify(&index.reference, &key_policy(&registry, &cosign, "")).await);
    let every = key_policy(&registry, &cosign, "  multiArch: everyPlatform\n");
    assert_refused_because(
        &verify(&index.reference, &every).await,
        &format!("no signature found for {}", amd64.digest),
    );

    cosign.sign(&amd64.by_digest(), Format::Legacy);
    cosign.sign(&arm64.by_digest(), Format::Legacy);
    let verdict = verify(&index.reference, &every).await;
    assert_admitted(&verdict);
    assert_eq!(
        verdict.policies[0].authorities.len(),
        3,
        "index and two platforms: {verdict:#?}"
    );
}

#[tokio::test]
async fn results_are_cached_and_ungoverned_images_cost_nothing() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "cache").await;
    cosign.sign(&image.reference, Format::Legacy);
    let policy = key_policy(&registry, &cosign, "");
    let verifier = Verifier::new(VerifierSettings::default(), None);

    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy).await);
    let after_first = verifier.registry_requests();
    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy).await);
    assert_eq!(
        verifier.registry_requests(),
        after_first,
        "a cached result went back to the registry"
    );
    assert_eq!(verifier.cache_stats(), (1, 1));

    let ungoverned = verify_with(&verifier, "elsewhere.example/app:1", &policy).await;
    assert!(ungoverned.admitted() && ungoverned.policies.is_empty());
    assert_eq!(verifier.registry_requests(), after_first);
}

#[tokio::test]
async fn concurrent_lookups_of_one_image_share_one_fetch() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "coalesce").await;
    cosign.sign(&image.reference, Format::Legacy);
    let policy = key_policy(&registry, &cosign, "");
    let verifier = Verifier::new(VerifierSettings::default(), None);

    let reference = image.by_digest();
    let verdicts =
        futures::future::join_all((0..8).map(|_| verify_with(&verifier, &reference, &policy)))
            .await;
    assert!(verdicts.iter().all(ImageVerdict::admitted));
    assert_eq!(
        verifier.registry_requests(),
        4,
        "eight lookups, one discovery"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
