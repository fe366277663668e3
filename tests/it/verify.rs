//! The verification engine against real registries and real cosign signatures: what must be admitted,
//! and each way a signature can be missing, wrong, or forged that must be refused with its reason.

use crate::support::cosign::{Cosign, Format};
use crate::support::fakes::RegistryxProxy;
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{
    BUDGET, altered_signature, assert_admitted, assert_refused, assert_refused_saying, first_proof,
    get_blob, key_policy, legacy_signed_image, new_verifier, put_signature_manifest,
    signature_manifest, verify, verify_with,
};
use registryx_guard::policy::MultiArch;
use registryx_guard::refusal::Reason;
use registryx_guard::verify::ImageVerdict;

#[tokio::test]
async fn admits_a_key_signed_legacy_signature_with_its_evidence() {
    let (registry, cosign, image) = legacy_signed_image("legacy").await;

    let verdict = verify(&image.reference, &key_policy(&registry.host, &cosign)).await;
    assert_admitted(&verdict);
    assert_eq!(verdict.digest.as_deref(), Some(image.digest.as_str()));
    let proof = first_proof(&verdict);
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

    let verdict = verify(&image.reference, &key_policy(&registry.host, &cosign)).await;
    assert_admitted(&verdict);
    assert_eq!(first_proof(&verdict).format, "bundle");
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

    assert_admitted(&verify(&image.reference, &key_policy(&registry.host, &cosign)).await);
}

/// A referrers list that does not parse as an OCI index (a registry that writes a sloppy one) is
/// reported, and cosign's fallback tag is still read: a bundle stored there verifies.
#[tokio::test]
async fn a_referrers_list_that_does_not_parse_still_reads_the_fallback_tag() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "sloppy").await;
    cosign.sign(&image.reference, Format::Bundle);
    let proxy = RegistryxProxy::start(&registry.host).await;
    proxy.serve_sloppy_referrers();
    let reference = image.reference.replacen(&registry.host, &proxy.host(), 1);

    let verdict = verify(&reference, &key_policy(&proxy.host(), &cosign)).await;
    assert_admitted(&verdict);
    assert_eq!(first_proof(&verdict).format, "bundle");
    assert!(
        proxy.requests().referrers >= 1,
        "the referrers API was not asked"
    );
}

#[tokio::test]
async fn admits_an_image_given_by_digest_without_resolving_a_tag() {
    let (registry, cosign, image) = legacy_signed_image("by-digest").await;

    let verifier = new_verifier();
    let verdict = verify_with(
        &verifier,
        &image.by_digest(),
        &key_policy(&registry.host, &cosign),
        BUDGET,
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

    let verdict = verify(&image.reference, &key_policy(&registry.host, &cosign)).await;
    assert_refused_saying(
        &verdict,
        Reason::NoSignature,
        &[&format!(
            "no signature found for {} in {}/team/app",
            image.digest, registry.host
        )],
    );
    let remedy = verdict.policies[0]
        .failure
        .as_ref()
        .and_then(|f| f.remedy.as_deref())
        .unwrap();
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
    let verdict = verify(&image.reference, &key_policy(&registry.host, &trusted)).await;
    assert_refused_saying(
        &verdict,
        Reason::OtherSigner,
        &["does not verify with key sha256:"],
    );

    let bundles = Registry::with_referrers();
    let image = bundles
        .push_image("team/app", "v1", "other-key-bundle")
        .await;
    other.sign(&image.reference, Format::Bundle);
    assert_refused(
        &verify(&image.reference, &key_policy(&bundles.host, &trusted)).await,
        Reason::OtherSigner,
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
    let manifest = signature_manifest(&registry, &signed).await;
    put_signature_manifest(&registry, &target, &manifest).await;

    let verdict = verify(&target.reference, &key_policy(&registry.host, &cosign)).await;
    assert_refused_saying(
        &verdict,
        Reason::OtherDigest,
        &[&format!(
            "the signature is for {}, not for this image's {}",
            signed.digest, target.digest
        )],
    );
}

#[tokio::test]
async fn refuses_a_tag_moved_to_an_unsigned_image_after_signing() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry.push_image("team/app", "v1", "before").await;
    cosign.sign(&signed.reference, Format::Legacy);
    let policy = key_policy(&registry.host, &cosign);
    assert_admitted(&verify(&signed.reference, &policy).await);

    let moved = registry.push_image("team/app", "v1", "after").await;
    assert_ne!(moved.digest, signed.digest);
    let verdict = verify(&moved.reference, &policy).await;
    assert_eq!(verdict.digest.as_deref(), Some(moved.digest.as_str()));
    assert_refused_saying(
        &verdict,
        Reason::OtherDigest,
        &[&format!("no signature found for {}", moved.digest)],
    );
}

#[tokio::test]
async fn refuses_altered_signature_bytes() {
    let (registry, cosign, image) = legacy_signed_image("altered-signature").await;

    let mut manifest = signature_manifest(&registry, &image).await;
    let annotation =
        &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    *annotation = altered_signature(annotation.as_str().unwrap()).into();
    put_signature_manifest(&registry, &image, &manifest).await;

    assert_refused(
        &verify(&image.reference, &key_policy(&registry.host, &cosign)).await,
        Reason::OtherSigner,
    );
}

#[tokio::test]
async fn refuses_an_altered_payload() {
    let (registry, cosign, image) = legacy_signed_image("altered-payload").await;

    let mut manifest = signature_manifest(&registry, &image).await;
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let payload = get_blob(&registry, "team/app", &layer_digest).await;
    let altered = String::from_utf8(payload.clone())
        .unwrap()
        .replace("\"optional\":null", "\"optional\":{\"approved\":\"yes\"}");
    assert_ne!(
        altered.as_bytes(),
        payload.as_slice(),
        "the payload did not change"
    );
    let altered_digest = registry.push_blob("team/app", altered.as_bytes()).await;
    manifest["layers"][0]["digest"] = altered_digest.into();
    manifest["layers"][0]["size"] = altered.len().into();
    put_signature_manifest(&registry, &image, &manifest).await;

    assert_refused(
        &verify(&image.reference, &key_policy(&registry.host, &cosign)).await,
        Reason::OtherSigner,
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
    assert_admitted(&verify(&index.reference, &key_policy(&registry.host, &cosign)).await);
    let every = PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .multi_arch(MultiArch::EveryPlatform)
        .compile();
    assert_refused_saying(
        &verify(&index.reference, &every).await,
        Reason::OtherDigest,
        &[&format!("no signature found for {}", amd64.digest)],
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
    let (registry, cosign, image) = legacy_signed_image("cache").await;
    let policy = key_policy(&registry.host, &cosign);
    let verifier = new_verifier();

    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy, BUDGET).await);
    let after_first = verifier.registry_requests();
    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy, BUDGET).await);
    assert_eq!(
        verifier.registry_requests(),
        after_first,
        "a cached result went back to the registry"
    );
    assert_eq!(verifier.cache_stats(), (1, 1));

    let ungoverned = verify_with(&verifier, "elsewhere.example/app:1", &policy, BUDGET).await;
    assert!(ungoverned.admitted() && ungoverned.policies.is_empty());
    assert_eq!(verifier.registry_requests(), after_first);
}

#[tokio::test]
async fn concurrent_lookups_of_one_image_share_one_fetch() {
    let (registry, cosign, image) = legacy_signed_image("coalesce").await;
    let policy = key_policy(&registry.host, &cosign);
    let verifier = new_verifier();

    let reference = image.by_digest();
    let verdicts = futures::future::join_all(
        (0..8).map(|_| verify_with(&verifier, &reference, &policy, BUDGET)),
    )
    .await;
    assert!(verdicts.iter().all(ImageVerdict::admitted));
    assert_eq!(
        verifier.registry_requests(),
        4,
        "eight lookups, one discovery"
    );
}

#[tokio::test]
async fn a_registry_without_the_referrers_api_is_asked_for_it_once() {
    // distribution has no referrers route (a plain-text 404): after three such answers in a row the
    // verifier stops asking, and still finds both formats, the bundle behind its fallback tag.
    let registry = Registry::distribution();
    let proxy = crate::support::fakes::RegistryxProxy::start(&registry.host).await;
    let cosign = Cosign::with_new_key_pair();
    let mut images = Vec::new();
    for (i, format) in [
        Format::Legacy,
        Format::Legacy,
        Format::Legacy,
        Format::Bundle,
        Format::Legacy,
    ]
    .into_iter()
    .enumerate()
    {
        let image = registry
            .push_image("team/app", &format!("v{i}"), &format!("absent-{i}"))
            .await;
        cosign.sign(&image.reference, format);
        images.push(image);
    }
    let through_proxy = |image: &crate::support::registry::PushedImage| {
        image.by_digest().replace(&registry.host, &proxy.host())
    };
    let policy = key_policy(&proxy.host(), &cosign);
    let verifier = new_verifier();

    for image in &images[..3] {
        assert_admitted(&verify_with(&verifier, &through_proxy(image), &policy, BUDGET).await);
    }
    let asked = proxy.requests().referrers;
    assert!(asked >= 3, "{:?}", proxy.requests());
    for image in &images[3..] {
        assert_admitted(&verify_with(&verifier, &through_proxy(image), &policy, BUDGET).await);
    }
    assert_eq!(proxy.requests().referrers, asked, "{:?}", proxy.requests());
}

#[tokio::test]
async fn an_oci_error_from_the_referrers_api_is_not_taken_for_its_absence() {
    // A JSON 404 (NAME_UNKNOWN, MANIFEST_UNKNOWN...) speaks of one repository: every digest is asked again.
    let registry = crate::support::fakes::FailingRegistry::start(404).await;
    let cosign = Cosign::with_new_key_pair();
    let policy = key_policy(&registry.host(), &cosign);
    let verifier = new_verifier();
    let digest = |n: char| {
        format!(
            "{}/team/app@sha256:{}",
            registry.host(),
            n.to_string().repeat(64)
        )
    };

    assert!(
        !verify_with(&verifier, &digest('a'), &policy, BUDGET)
            .await
            .admitted()
    );
    let first = registry.requests();
    assert!(
        !verify_with(&verifier, &digest('b'), &policy, BUDGET)
            .await
            .admitted()
    );
    assert_eq!(
        registry.requests() - first,
        first,
        "the second digest cost fewer requests"
    );
}
