//! Keyless signatures: certificates from a CA the tests make (Fulcio-style issuer extensions and SAN),
//! signed by real cosign with `--certificate`/`--certificate-chain`, in both formats; and certificate
//! transparency: leaves whose embedded SCT a CT log of the tests' own signed, or forged, checked by
//! registryx-guard and by cosign alike.

use registryx_guard::refusal::Reason;
use std::sync::Arc;

use crate::support::cosign::{Format, assert_success};
use crate::support::keyless::{Leaf, Sct, TestCa, TestCtLog};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{
    assert_admitted, assert_refused, assert_refused_saying, first_proof, verify,
};
use registryx_guard::policy::CompiledPolicy;
use registryx_guard::policy::PolicySnapshot;
use registryx_guard::policy::authority::NoSecrets;

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

// ---------------------------------------------------------------------------------------------------
// Certificate transparency: the embedded SCTs of keyless certificates

/// What a Ready policy's status says of an authority whose SCTs are not checked.
const SCTS_NOT_CHECKED: &str = "embedded SCTs are not checked";

/// `team/app:<tag>` (its digest made by `seed`) pushed to `registry` and signed by `leaf` in `format`.
async fn signed(registry: &Registry, leaf: &Leaf, tag: &str, seed: &str, format: Format) -> String {
    let image = registry.push_image("team/app", tag, seed).await;
    leaf.sign(&image.reference, format);
    image.reference
}

/// A keyless policy over `registry` whose `trustedRootJSON` holds `ca` and the CT log `ct_log`,
/// without a transparency log.
fn trusted_root_policy(registry: &Registry, ca: &TestCa, ct_log: &TestCtLog) -> PolicySpec {
    let json = ca.trusted_root_json_with_ct_log(ct_log).to_string();
    PolicySpec::keyless(&registry.host, ISSUER, SUBJECT)
        .trusted_root_json(&json)
        .transparency_log(false, None)
}

/// [`ca_policy`] trusting the CT log `ct_log` (`trustRoot.ctLogKey`), without a transparency log.
fn ct_policy(registry: &Registry, ca: &TestCa, ct_log: &TestCtLog) -> PolicySpec {
    ca_policy(registry, ca)
        .ct_log_key(&ct_log.public_key_pem())
        .transparency_log(false, None)
}

/// The remedy of the first policy's refusal.
fn remedy(verdict: &registryx_guard::verify::ImageVerdict) -> String {
    verdict.policies[0]
        .failure
        .as_ref()
        .and_then(|f| f.remedy.clone())
        .unwrap_or_default()
}

/// The Ready message `policy` compiles to (what `kubectl describe isp` shows), or its error.
fn status_message(policy: &PolicySpec) -> Result<String, String> {
    let (_, results) = PolicySnapshot::build(&[policy.policy()], &NoSecrets, "registryx-guard", 1);
    results.into_values().next().expect("one result")
}

/// `policy` is Ready, and its message says that authority `ci`'s SCTs are not checked, and why.
#[track_caller]
fn assert_scts_not_checked(policy: &PolicySpec, why: &str) {
    let message = status_message(policy).unwrap();
    assert!(
        message.contains(&format!("authority \"ci\": {SCTS_NOT_CHECKED} ({why}")),
        "{message}"
    );
}

/// Cosign, checking the leaf's SCT against `ct_log`, agrees that the signature of `image` verifies
/// (or that it does not, for its SCT: "certificate does not include required embedded SCT", "error
/// verifying embedded SCT", "ctfe public key not found", "only able to verify 0 SCT entries").
#[track_caller]
fn assert_cosign_agrees(
    leaf: &Leaf,
    image: &str,
    format: Format,
    ct_log: &TestCtLog,
    verifies: bool,
) {
    let output = leaf.verify_sct(image, format, ct_log);
    if verifies {
        assert_success("cosign verify with the CT log key", &output);
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "cosign accepted the SCT that registryx-guard refused:\n{stderr}"
        );
        assert!(
            stderr.contains("SCT") || stderr.contains("ctfe public key not found"),
            "cosign refused for another reason than the SCT:\n{stderr}"
        );
    }
}

/// A leaf whose SCT the trusted CT log signed verifies, with the log's key given as `ctLogKey` (a
/// legacy signature, the root issuing) or in the `ctlogs` of a `trustedRootJSON` (a bundle, an
/// intermediate issuing, as Fulcio's does); cosign agrees on both.
#[tokio::test]
async fn admits_a_leaf_whose_embedded_sct_the_trusted_ct_log_signed() {
    let ct_log = TestCtLog::new();

    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let leaf = ca.issue_with(ISSUER, SUBJECT, Sct::By(&ct_log));
    let image = signed(&registry, &leaf, "v1", "sct-legacy", Format::Legacy).await;
    let policy = ct_policy(&registry, &ca, &ct_log);
    assert_admitted(&verify(&image, &policy.compile()).await);
    assert_cosign_agrees(&leaf, &image, Format::Legacy, &ct_log, true);
    let message = status_message(&policy).unwrap();
    assert!(!message.contains(SCTS_NOT_CHECKED), "{message}");

    let bundles = Registry::with_referrers();
    let ca = TestCa::with_intermediate("ci-ca");
    let leaf = ca.issue_with(ISSUER, SUBJECT, Sct::By(&ct_log));
    let image = signed(&bundles, &leaf, "v1", "sct-bundle", Format::Bundle).await;
    let policy = trusted_root_policy(&bundles, &ca, &ct_log).compile();
    assert_admitted(&verify(&image, &policy).await);
    assert_cosign_agrees(&leaf, &image, Format::Bundle, &ct_log, true);
}

/// Where a CT log key is known, the check is on by default, as cosign's is: a leaf without SCT (from a
/// CA that logs nothing, or that hides a certificate from the log) is refused for that reason. A policy
/// may turn the check off (`keyless.ctLog.required: false`): the same signature is then admitted, and
/// the policy's Ready message says that SCTs are not checked.
#[tokio::test]
async fn refuses_a_leaf_without_an_sct_unless_the_policy_turns_the_check_off() {
    let ct_log = TestCtLog::new();
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);
    let image = signed(&registry, &leaf, "v1", "no-sct", Format::Legacy).await;
    let verdict = verify(&image, &ct_policy(&registry, &ca, &ct_log).compile()).await;
    assert_refused_saying(&verdict, Reason::SctMissing, &["carries no embedded SCT"]);
    let remedy = remedy(&verdict);
    assert!(
        remedy.contains("sign with a Fulcio that embeds SCTs")
            && remedy.contains("keyless.ctLog.required: false"),
        "{remedy}"
    );
    assert_cosign_agrees(&leaf, &image, Format::Legacy, &ct_log, false);

    let off = ct_policy(&registry, &ca, &ct_log).ct_log_required(false);
    assert_admitted(&verify(&image, &off.compile()).await);
    assert_scts_not_checked(&off, "keyless.ctLog.required: false");

    // The trusted root's CT logs count as `ctLogKey` does.
    let bundles = Registry::with_referrers();
    let image = signed(&bundles, &leaf, "v1", "no-sct-bundle", Format::Bundle).await;
    let policy = trusted_root_policy(&bundles, &ca, &ct_log).compile();
    assert_refused(&verify(&image, &policy).await, Reason::SctMissing);
    assert_cosign_agrees(&leaf, &image, Format::Bundle, &ct_log, false);
}

/// An SCT that the trusted log did not make over this very certificate is refused as invalid, and its
/// remedy does not offer to turn the check off; cosign refuses each too.
#[tokio::test]
async fn refuses_forged_scts() {
    let (ct_log, rogue_log) = (TestCtLog::new(), TestCtLog::new());
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let policy = ct_policy(&registry, &ca, &ct_log).compile();
    for (tag, sct, refusal) in [
        (
            "flipped",
            Sct::Flipped(&ct_log),
            "does not verify with the key of CT log",
        ),
        (
            "rogue-log",
            Sct::By(&rogue_log),
            "from a CT log this authority does not trust",
        ),
        (
            "impersonating",
            Sct::Impersonating {
                named: &ct_log,
                signer: &rogue_log,
            },
            "does not verify with the key of CT log",
        ),
        (
            "grafted",
            Sct::Grafted(&ct_log),
            "does not verify with the key of CT log",
        ),
    ] {
        let leaf = ca.issue_with(ISSUER, SUBJECT, sct);
        let seed = format!("forged-sct-{tag}");
        let image = signed(&registry, &leaf, tag, &seed, Format::Legacy).await;
        let verdict = verify(&image, &policy).await;
        assert_refused_saying(&verdict, Reason::SctInvalid, &[refusal]);
        let remedy = remedy(&verdict);
        assert!(
            remedy.contains("check keyless.trustRoot's ctLogKey") && !remedy.contains("required"),
            "{tag}: {remedy}"
        );
        assert_cosign_agrees(&leaf, &image, Format::Legacy, &ct_log, false);
    }
}

/// Without a CT log key (no `ctLogKey`, no `ctlogs` in the trusted root) nothing changes: SCTs are not
/// checked, so a leaf without one or with a forged one verifies as before, and the status says so;
/// demanding the check without a key makes the policy not Ready.
#[tokio::test]
async fn without_a_ct_log_key_scts_are_not_checked_and_the_status_says_so() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let policy = ca_policy(&registry, &ca).transparency_log(false, None);
    for (tag, leaf) in [
        ("none", ca.issue(ISSUER, SUBJECT)),
        (
            "flipped",
            ca.issue_with(ISSUER, SUBJECT, Sct::Flipped(&TestCtLog::new())),
        ),
    ] {
        let seed = format!("no-ct-key-{tag}");
        let image = signed(&registry, &leaf, tag, &seed, Format::Legacy).await;
        assert_admitted(&verify(&image, &policy.compile()).await);
    }
    assert_scts_not_checked(&policy, "no CT log key");

    let error = status_message(&policy.clone().ct_log_required(true)).unwrap_err();
    assert!(
        error.contains("an embedded SCT is required but no CT log key is configured"),
        "{error}"
    );
}
