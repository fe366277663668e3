//! Refusals that tell the truth: for each state a registry can be in, the reason code (in the JSON
//! evidence and the metrics label), the message, and the one remedy that fixes it, never "sign it" where
//! signing would not help. Real registries and real cosign signatures; RegistryX's own defects through
//! its fake (its REST shapes and quirks in front of a real registry).

use std::sync::Arc;
use std::time::Duration;

use crate::support::cosign::Cosign;
use crate::support::fakes::{HangingRegistry, RegistryxProxy};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{key_policy, legacy_signed_image, verify_within};
use registryx_guard::admission::{Admission, AdmissionMetrics, AdmissionSettings};
use registryx_guard::policy::MultiArch;
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{PolicySnapshot, shared};
use registryx_guard::verify::{ImageVerdict, Verifier, VerifierSettings};

/// The verdict on `reference` under a policy that trusts `cosign`'s key for every image of `host`,
/// within the 10 s every case here allows.
async fn verify_under_key(reference: &str, host: &str, cosign: &Cosign) -> ImageVerdict {
    verify_within(
        reference,
        &key_policy(host, cosign),
        Duration::from_secs(10),
    )
    .await
}

/// The verdict's reason code, remedy and messages, as `verify --output json` shows them.
fn explain(verdict: &ImageVerdict) -> (String, String, String) {
    let json = serde_json::to_value(verdict).unwrap();
    let policy = &json["policies"][0];
    (
        policy["reasonKind"].as_str().unwrap_or_default().to_owned(),
        policy["remedy"].as_str().unwrap_or_default().to_owned(),
        policy["reasons"].to_string(),
    )
}

#[track_caller]
fn assert_reason(verdict: &ImageVerdict, code: &str, message: &str, remedy: &str) {
    assert!(!verdict.admitted(), "admitted: {verdict:#?}");
    let (kind, given, reasons) = explain(verdict);
    assert_eq!(kind, code, "{reasons}");
    assert!(reasons.contains(message), "{message:?} not in {reasons}");
    assert!(given.contains(remedy), "remedy {given:?} lacks {remedy:?}");
    let signing_fixes = matches!(code, "no_signature" | "other_signer" | "other_digest");
    assert_eq!(
        given.contains("cosign sign"),
        signing_fixes,
        "{code}: remedy {given:?}"
    );
}

#[tokio::test]
async fn no_signature_at_all() {
    let registry = Registry::distribution();
    let image = registry
        .push_image("team/app", "v1", "reason-unsigned")
        .await;
    let cosign = Cosign::with_new_key_pair();
    let verdict = verify_under_key(&image.reference, &registry.host, &cosign).await;
    assert_reason(
        &verdict,
        "no_signature",
        "no signature found",
        "cosign sign --key",
    );
}

#[tokio::test]
async fn signed_but_by_another_key() {
    let (registry, _, image) = legacy_signed_image("reason-other-key").await;
    let other = Cosign::with_new_key_pair();
    let verdict = verify_under_key(&image.reference, &registry.host, &other).await;
    assert_reason(
        &verdict,
        "other_signer",
        "does not verify with key",
        "by other signers",
    );
}

#[tokio::test]
async fn a_signature_for_another_digest_says_re_pushed() {
    let (registry, cosign, image) = legacy_signed_image("reason-moved").await;
    // The signature of the first digest, copied onto the tag of a second one: what a registry holds
    // when a tag is re-pushed and someone copies the old `.sig` along.
    let second = registry
        .push_image("team/app", "v2", "reason-moved-2")
        .await;
    let signature = crate::support::verdicts::signature_manifest(&registry, &image).await;
    crate::support::verdicts::put_signature_manifest(&registry, &second, &signature).await;
    let verdict = verify_under_key(&second.reference, &registry.host, &cosign).await;
    assert_reason(
        &verdict,
        "other_digest",
        "the signature is for",
        "re-pushed without re-signing?",
    );
}

#[tokio::test]
async fn a_tag_re_pushed_without_re_signing_says_so() {
    let (registry, cosign, first) = legacy_signed_image("reason-repushed").await;
    // New content under the same tag, never signed: the old digest's `.sig` tag is all there is.
    let second = registry
        .push_image("team/app", "v1", "reason-repushed-2")
        .await;
    assert_ne!(first.digest, second.digest);
    let verdict = verify_under_key(
        &format!("{}/team/app:v1", registry.host),
        &registry.host,
        &cosign,
    )
    .await;
    assert_reason(
        &verdict,
        "other_digest",
        "was v1 re-pushed without re-signing?",
        "cosign sign --key",
    );
    let (_, remedy, reasons) = explain(&verdict);
    assert!(reasons.contains(&first.digest), "{reasons}");
    assert!(
        remedy.contains(&second.digest),
        "signs the new digest: {remedy}"
    );

    // By digest there is no tag that could have moved: no listing, no question.
    let verdict = verify_under_key(
        &format!("{}/team/app@{}", registry.host, second.digest),
        &registry.host,
        &cosign,
    )
    .await;
    assert_reason(
        &verdict,
        "no_signature",
        "no signature found",
        "cosign sign --key",
    );

    // Another repository's signatures say nothing about this one.
    let lone = registry
        .push_image("team/other", "v1", "reason-repushed-3")
        .await;
    let verdict = verify_under_key(&lone.reference, &registry.host, &cosign).await;
    assert_reason(
        &verdict,
        "no_signature",
        "no signature found",
        "cosign sign --key",
    );
}

#[tokio::test]
async fn an_empty_blob_is_registryx_chunked_upload_defect_not_unsigned() {
    let (upstream, cosign, _) = legacy_signed_image("reason-empty").await;
    let proxy = RegistryxProxy::start(&upstream.host).await;
    proxy.serve_empty_blobs();
    let verdict = verify_under_key(
        &format!("{}/team/app:v1", proxy.host()),
        &proxy.host(),
        &cosign,
    )
    .await;
    assert_reason(
        &verdict,
        "empty_blob",
        "the registry returned an empty blob",
        "0 bytes",
    );
}

#[tokio::test]
async fn credentials_the_token_endpoint_rejects() {
    let (upstream, cosign, _) = legacy_signed_image("reason-401").await;
    let proxy = RegistryxProxy::start(&upstream.host)
        .await
        .with_credentials("robot", "s3cret");
    let verdict = verify_under_key(
        &format!("{}/team/app:v1", proxy.host()),
        &proxy.host(),
        &cosign,
    )
    .await;
    assert_reason(
        &verdict,
        "unauthorized",
        "not authorized",
        "credentialsSecretRef",
    );
}

#[tokio::test]
async fn registryx_denied_is_the_registrys_refusal() {
    let (upstream, cosign, _) = legacy_signed_image("reason-denied").await;
    let proxy = RegistryxProxy::start(&upstream.host).await;
    proxy.deny("team/app", "critical vulnerabilities");
    let verdict = verify_under_key(
        &format!("{}/team/app:v1", proxy.host()),
        &proxy.host(),
        &cosign,
    )
    .await;
    assert_reason(
        &verdict,
        "registry_refused",
        "DENIED policy violation: critical vulnerabilities",
        "its own policy",
    );
}

#[tokio::test]
async fn a_registry_that_hangs_is_unreachable_with_the_step() {
    let hanging = HangingRegistry::start().await;
    let cosign = Cosign::with_new_key_pair();
    let verdict = verify_within(
        &format!("{}/team/app:v1", hanging.host()),
        &key_policy(&hanging.host(), &cosign),
        Duration::from_millis(1500),
    )
    .await;
    assert_reason(
        &verdict,
        "unreachable",
        "resolve team/app:v1: no answer within",
        "answers from registryx-guard",
    );
}

#[tokio::test]
async fn the_metrics_label_is_the_typed_reason_not_a_word_in_the_message() {
    registryx_guard::tls::install_crypto_provider();
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    // An unsigned image in a repository whose name holds "rego".
    let image = registry
        .push_image("team/rego-app", "v1", "reason-label")
        .await;
    let policy = PolicySpec::key(&registry.host, &cosign.public_key_pem()).policy();
    let (snapshot, _) = PolicySnapshot::build(&[policy], &NoSecrets, "registryx-guard", 1);
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = AdmissionMetrics::register(&mut metrics_registry, verifier.clone());
    let admission = Admission::new(
        shared(snapshot),
        verifier,
        None,
        AdmissionSettings::default(),
        Some(metrics),
    );
    let fixture =
        std::fs::read_to_string(crate::support::repo_root().join("tests/data/pod-create.json"))
            .unwrap();
    let mut review: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    review["request"]["object"]["spec"] =
        serde_json::json!({"containers": [{"name": "app", "image": image.by_digest()}]});
    let request = serde_json::from_value(review["request"].take()).unwrap();
    let response = admission
        .review(
            &request,
            std::time::Instant::now() + Duration::from_secs(10),
            false,
        )
        .await;
    assert!(!response.allowed);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics_registry).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("registryx_guard_admission_decisions_total{") && l.contains("deny"))
        .unwrap_or_else(|| panic!("no decision counted:\n{text}"));
    assert!(line.contains("reason=\"no_signature\""), "{line}");
    assert!(!line.contains("rego"), "{line}");
}

#[tokio::test]
async fn a_registry_whose_image_manifest_does_not_check_out_is_not_a_signing_problem() {
    let registry = crate::support::fakes::LyingRegistry::start().await;
    let cosign = Cosign::with_new_key_pair();
    let policy = PolicySpec::key(&registry.host(), &cosign.public_key_pem())
        .multi_arch(MultiArch::EveryPlatform)
        .compile();
    let verdict = verify_within(
        &format!("{}/team/app:v1", registry.host()),
        &policy,
        Duration::from_secs(10),
    )
    .await;
    assert_reason(
        &verdict,
        "image_unreadable",
        "content does not match its digest",
        "does not check out",
    );
}
