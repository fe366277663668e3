//! Keyless signatures: certificates from a CA the tests make (Fulcio-style issuer extensions and SAN),
//! signed by real cosign with `--certificate`/`--certificate-chain`, in both formats.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use registryx_guard::policy::{CompiledPolicy, ImageSigningPolicy, compile};
use registryx_guard::registry::ImageRef;
use registryx_guard::verify::authority::NoSecrets;
use registryx_guard::verify::{ImageVerdict, Verifier, VerifierSettings};
use support::cosign::Format;
use support::keyless::TestCa;
use support::registry::Registry;

const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.trim_end()
        .lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A keyless policy over `registry` trusting `trust_root` (YAML of the trustRoot field), no Rekor.
fn keyless_policy(
    registry: &Registry,
    identity: &str,
    trust_root: &str,
    tlog: &str,
) -> Arc<CompiledPolicy> {
    registryx_guard::tls::install_crypto_provider();
    let yaml = format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: keyless}}\nspec:\n  images: ['{}/**']\n  \
         registry: {{insecure: true}}\n  authorities:\n  - name: ci\n    keyless:\n      identities: [{identity}]\n      trustRoot:\n{trust_root}\n{tlog}",
        registry.host
    );
    let parsed: ImageSigningPolicy =
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Arc::new(
        compile(&parsed, &NoSecrets, "registryx-guard").unwrap_or_else(|e| panic!("{e}\n{yaml}")),
    )
}

fn fulcio_ca(ca: &TestCa) -> String {
    format!("        fulcioCA: |\n{}", indent(&ca.chain_pem(), 10))
}

fn exact_identity() -> String {
    format!("{{issuer: '{ISSUER}', subject: '{SUBJECT}'}}")
}

const NO_TLOG: &str = "    transparencyLog: {required: false}\n";

async fn verify(reference: &str, policy: &Arc<CompiledPolicy>) -> ImageVerdict {
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let image = ImageRef::parse(reference).unwrap();
    verifier
        .verify(
            &image,
            std::slice::from_ref(policy),
            Instant::now() + Duration::from_secs(20),
        )
        .await
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

#[tokio::test]
async fn admits_a_keyless_legacy_signature_and_reports_the_identity() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);
    let image = registry
        .push_image("team/app", "v1", "keyless-legacy")
        .await;
    leaf.sign(&image.reference, Format::Legacy);

    let verdict = verify(
        &image.reference,
        &keyless_policy(&registry, &exact_identity(), &fulcio_ca(&ca), NO_TLOG),
    )
    .await;
    assert!(verdict.admitted(), "{verdict:#?}");
    let proof = verdict.policies[0].authorities[0].proof.as_ref().unwrap();
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
    let trust_root = format!("        trustedRootJSON: '{}'", json.replace('\'', "''"));
    let identity = r"{issuerRegExp: '^https://issuer\.ci\.example$', subjectRegExp: '^https://ci\.example/team/.+$'}";
    let verdict = verify(
        &image.reference,
        &keyless_policy(&registry, identity, &trust_root, NO_TLOG),
    )
    .await;
    assert!(verdict.admitted(), "{verdict:#?}");
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
async fn refuses_a_certificate_from_another_ca() {
    let registry = Registry::distribution();
    let (trusted, rogue) = (TestCa::new("trusted"), TestCa::new("rogue"));
    let image = registry.push_image("team/app", "v1", "rogue-ca").await;
    rogue
        .issue(ISSUER, SUBJECT)
        .sign(&image.reference, Format::Legacy);
    let verdict = verify(
        &image.reference,
        &keyless_policy(&registry, &exact_identity(), &fulcio_ca(&trusted), NO_TLOG),
    )
    .await;
    assert_refused_because(&verdict, "does not chain to this authority's trust root");

    let bundles = Registry::with_referrers();
    let image = bundles
        .push_image("team/app", "v1", "rogue-ca-bundle")
        .await;
    rogue
        .issue(ISSUER, SUBJECT)
        .sign(&image.reference, Format::Bundle);
    let verdict = verify(
        &image.reference,
        &keyless_policy(&bundles, &exact_identity(), &fulcio_ca(&trusted), NO_TLOG),
    )
    .await;
    assert_refused_because(&verdict, "does not chain to this authority's trust root");
}

#[tokio::test]
async fn refuses_another_subject_or_issuer() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let other_subject = registry
        .push_image("team/app", "subject", "other-subject")
        .await;
    ca.issue(ISSUER, "https://ci.example/someone/else@refs/heads/main")
        .sign(&other_subject.reference, Format::Legacy);
    let other_issuer = registry
        .push_image("team/app", "issuer", "other-issuer")
        .await;
    ca.issue("https://accounts.evil.example", SUBJECT)
        .sign(&other_issuer.reference, Format::Legacy);
    let policy = keyless_policy(&registry, &exact_identity(), &fulcio_ca(&ca), NO_TLOG);

    assert_refused_because(
        &verify(&other_subject.reference, &policy).await,
        "subject \"https://ci.example/someone/else@refs/heads/main\", which this authority does not accept",
    );
    assert_refused_because(
        &verify(&other_issuer.reference, &policy).await,
        "signed by issuer \"https://accounts.evil.example\"",
    );
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
    let trust_root = format!(
        "{}\n        rekorKey: |\n{}",
        fulcio_ca(&ca),
        indent(&rekor_key, 10)
    );
    let verdict = verify(
        &image.reference,
        &keyless_policy(&registry, &exact_identity(), &trust_root, ""),
    )
    .await;
    assert_refused_because(
        &verdict,
        "no transparency-log entry accompanies the signature, and this authority requires one",
    );
}

#[tokio::test]
async fn refuses_a_key_signature_under_a_keyless_authority() {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let cosign = support::cosign::Cosign::with_new_key_pair();
    let image = registry
        .push_image("team/app", "v1", "key-not-keyless")
        .await;
    cosign.sign(&image.reference, Format::Legacy);
    let verdict = verify(
        &image.reference,
        &keyless_policy(&registry, &exact_identity(), &fulcio_ca(&ca), NO_TLOG),
    )
    .await;
    assert_refused_because(&verdict, "carries no certificate");
}
