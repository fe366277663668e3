//! Keyless signatures: certificates from a CA the tests make (Fulcio-style issuer extensions and SAN),
//! signed by real cosign with `--certificate`/`--certificate-chain`, in both formats.

use registryx_guard::refusal::Reason;
use std::sync::Arc;

use crate::support::cosign::Format;
use crate::support::keyless::TestCa;
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{
    assert_admitted, assert_refused, assert_refused_saying, first_proof, verify,
};
use registryx_guard::policy::CompiledPolicy;

const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

/// A keyless policy over `registry` accepting exactly ISSUER and SUBJECT from `ca`; no Rekor key yet.
fn ca_policy(registry: &Registry, ca: &TestCa) -> PolicySpec {
    PolicySpec::keyless(&registry.host, ISSUER, SUBJECT).fulcio_ca(&ca.chain_pem())
}

/// [`ca_policy`] without a transparency log, compiled.
fn untlogged_policy(registry: &Registry, ca: &TestCa) -> Arc<CompiledPolicy> {
    ca_policy(registry, ca)
        .transparency_log(false, None)
        .compile()
}

#[tokio::test]
async fn admits_a_keyless_legacy_signature_and_reports_the_identity() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);
    let image = registry
        .push_image("team/app", "v1", "keyless-legacy")
        .await;
    leaf.sign(&image.reference, Format::Legacy);

    let verdict = verify(&image.reference, &untlogged_policy(&registry, &ca)).await;
    assert_admitted(&verdict);
    let proof = first_proof(&verdict);
    assert_eq!(
        (proof.issuer.as_deref(), proof.subject.as_deref()),
        (Some(ISSUER), Some(SUBJECT))
    );
    assert_eq!(proof.format, "legacy");
}

#[tokio::test]
async fn admits_a_keyless_bundle_through_an_intermediate_and_a_trusted_root_json() {
    let registry = Registry::with_referrers();
    let ca = TestCa::with_intermediate("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);
    let image = registry
        .push_image("team/app", "v1", "keyless-bundle")
        .await;
    leaf.sign(&image.reference, Format::Bundle);

    let json = serde_json::to_string(&ca.trusted_root_json()).unwrap();
    let verdict = verify(
        &image.reference,
        &PolicySpec::new("keyless", &registry.host)
            .keyless_authority_matching(
                "ci",
                r"^https://issuer\.ci\.example$",
                r"^https://ci\.example/team/.+$",
            )
            .trusted_root_json(&json)
            .transparency_log(false, None)
            .compile(),
    )
    .await;
    assert_admitted(&verdict);
    assert_eq!(first_proof(&verdict).format, "bundle");
}

#[tokio::test]
async fn refuses_a_certificate_from_another_ca() {
    let registry = Registry::distribution();
    let (trusted, rogue) = (TestCa::new("trusted"), TestCa::new("rogue"));
    let image = registry.push_image("team/app", "v1", "rogue-ca").await;
    rogue
        .issue(ISSUER, SUBJECT)
        .sign(&image.reference, Format::Legacy);
    let verdict = verify(&image.reference, &untlogged_policy(&registry, &trusted)).await;
    assert_refused(&verdict, Reason::Certificate);

    let bundles = Registry::with_referrers();
    let image = bundles
        .push_image("team/app", "v1", "rogue-ca-bundle")
        .await;
    rogue
        .issue(ISSUER, SUBJECT)
        .sign(&image.reference, Format::Bundle);
    let verdict = verify(&image.reference, &untlogged_policy(&bundles, &trusted)).await;
    assert_refused(&verdict, Reason::Certificate);
}

/// Certificates from the trusted CA for identities the authority does not accept: (tag, issuer,
/// subject, what the refusal names).
#[tokio::test]
async fn refuses_another_subject_or_issuer() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let policy = untlogged_policy(&registry, &ca);
    let other_subject = "https://ci.example/someone/else@refs/heads/main";
    for (tag, issuer, subject, refusal) in [
        (
            "subject",
            ISSUER,
            other_subject,
            format!("subject \"{other_subject}\", which this authority does not accept"),
        ),
        (
            "issuer",
            "https://accounts.evil.example",
            SUBJECT,
            "signed by issuer \"https://accounts.evil.example\"".to_owned(),
        ),
    ] {
        let image = registry
            .push_image("team/app", tag, &format!("other-{tag}"))
            .await;
        ca.issue(issuer, subject)
            .sign(&image.reference, Format::Legacy);
        assert_refused_saying(
            &verify(&image.reference, &policy).await,
            Reason::OtherSigner,
            &[&refusal],
        );
    }
}

#[tokio::test]
async fn refuses_a_signature_without_the_required_transparency_log_entry() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let image = registry.push_image("team/app", "v1", "no-tlog").await;
    ca.issue(ISSUER, SUBJECT)
        .sign(&image.reference, Format::Legacy);
    let rekor_key = rcgen::KeyPair::generate().unwrap().public_key_pem();
    // Keyless authorities require a log entry unless told otherwise.
    let verdict = verify(
        &image.reference,
        &ca_policy(&registry, &ca).rekor_key(&rekor_key).compile(),
    )
    .await;
    assert_refused_saying(
        &verdict,
        Reason::TransparencyLog,
        &["no transparency-log entry accompanies the signature, and this authority requires one"],
    );
}

#[tokio::test]
async fn refuses_a_key_signature_under_a_keyless_authority() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let cosign = crate::support::cosign::Cosign::with_new_key_pair();
    let image = registry
        .push_image("team/app", "v1", "key-not-keyless")
        .await;
    cosign.sign(&image.reference, Format::Legacy);
    let verdict = verify(&image.reference, &untlogged_policy(&registry, &ca)).await;
    assert_refused_saying(&verdict, Reason::OtherSigner, &["carries no certificate"]);
}
