//! Registries that hang, fail, lie or refuse: every case ends in a refusal that names the registry and the
//! step, before the deadline. And RegistryX's own quirks: a token realm that names localhost:5000 and a
//! 403 DENIED from its pull policy.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use registryx_guard::policy::{CompiledPolicy, ImageSigningPolicy, compile};
use registryx_guard::registry::ImageRef;
use registryx_guard::verify::authority::NoSecrets;
use registryx_guard::verify::{ImageVerdict, Verifier, VerifierSettings};
use support::cosign::{Cosign, Format};
use support::fakes::{
    FailingRegistry, HangingRegistry, LyingRegistry, OversizedRegistry, RegistryxProxy,
};
use support::registry::Registry;

fn policy_for(host: &str, cosign: &Cosign) -> Arc<CompiledPolicy> {
    registryx_guard::tls::install_crypto_provider();
    let pem = cosign.public_key_pem().replace('\n', "\n        ");
    let yaml = format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: signed}}\nspec:\n  images: ['{host}/**']\n  \
         registry: {{insecure: true}}\n  authorities:\n  - name: release\n    key:\n      data: |\n        {pem}\n"
    );
    let parsed: ImageSigningPolicy = serde_yaml::from_str(&yaml).unwrap();
    Arc::new(compile(&parsed, &NoSecrets, "registryx-guard").unwrap())
}

async fn verify(
    reference: &str,
    policy: &Arc<CompiledPolicy>,
    budget: Duration,
) -> (ImageVerdict, Duration) {
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let image = ImageRef::parse(reference).unwrap();
    let start = Instant::now();
    let verdict = verifier
        .verify(&image, std::slice::from_ref(policy), start + budget)
        .await;
    (verdict, start.elapsed())
}

#[track_caller]
fn assert_refused_because(verdict: &ImageVerdict, needles: &[&str]) {
    assert!(!verdict.admitted(), "admitted: {verdict:#?}");
    let reasons = verdict
        .policies
        .iter()
        .flat_map(|p| p.reasons.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    for needle in needles {
        assert!(
            reasons.contains(needle),
            "expected {needle:?} among the reasons:\n{reasons}"
        );
    }
}

#[tokio::test]
async fn a_hanging_registry_is_refused_before_the_deadline() {
    let registry = HangingRegistry::start().await;
    let cosign = Cosign::with_new_key_pair();
    let policy = policy_for(&registry.host(), &cosign);

    let (verdict, elapsed) = verify(
        &format!("{}/team/app:v1", registry.host()),
        &policy,
        Duration::from_millis(1500),
    )
    .await;
    assert_refused_because(
        &verdict,
        &[&registry.host(), "resolve team/app:v1", "no answer within"],
    );
    // The verdict arrives at the deadline, not at some socket's timeout: a bound, not a benchmark.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}

#[tokio::test]
async fn a_registry_answering_500_is_refused_with_the_status() {
    let registry = FailingRegistry::start(500).await;
    let cosign = Cosign::with_new_key_pair();
    let policy = policy_for(&registry.host(), &cosign);
    let (verdict, _) = verify(
        &format!("{}/team/app:v1", registry.host()),
        &policy,
        Duration::from_secs(10),
    )
    .await;
    assert_refused_because(&verdict, &[&registry.host(), "HTTP 500"]);
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_without_reading_it_all() {
    let registry = OversizedRegistry::start(64 << 20).await;
    let cosign = Cosign::with_new_key_pair();
    let mut policy = (*policy_for(&registry.host(), &cosign)).clone();
    policy.multi_arch = registryx_guard::policy::MultiArch::EveryPlatform; // makes the image's manifest be read
    let (verdict, _) = verify(
        &format!("{}/team/app:v1", registry.host()),
        &Arc::new(policy),
        Duration::from_secs(10),
    )
    .await;
    assert_refused_because(&verdict, &["larger than the 4194304 byte limit"]);
    assert!(registry.bytes_sent() < 64 << 20, "the whole body was read");
}

#[tokio::test]
async fn a_registry_that_lies_about_a_digest_is_refused() {
    let registry = LyingRegistry::start().await;
    let cosign = Cosign::with_new_key_pair();
    let mut policy = (*policy_for(&registry.host(), &cosign)).clone();
    policy.multi_arch = registryx_guard::policy::MultiArch::EveryPlatform;
    let (verdict, _) = verify(
        &format!("{}/team/app:v1", registry.host()),
        &Arc::new(policy),
        Duration::from_secs(10),
    )
    .await;
    assert_refused_because(&verdict, &["content does not match its digest"]);
}

#[tokio::test]
async fn a_registryx_style_registry_with_a_localhost_token_realm_is_verified() {
    let upstream = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = upstream.push_image("team/app", "v1", "registryx").await;
    cosign.sign(&image.reference, Format::Legacy);
    let proxy = RegistryxProxy::start(&upstream.host).await;
    let policy = policy_for(&proxy.host(), &cosign);

    let (verdict, _) = verify(
        &format!("{}/team/app:v1", proxy.host()),
        &policy,
        Duration::from_secs(20),
    )
    .await;
    assert!(verdict.admitted(), "{verdict:#?}");
    assert_eq!(verdict.digest.as_deref(), Some(image.digest.as_str()));
    let requests = proxy.requests();
    assert!(requests.token >= 1, "no token was fetched: {requests:?}");
    assert!(
        proxy
            .token_scopes()
            .iter()
            .all(|s| s == "repository:team/app:pull"),
        "{:?}",
        proxy.token_scopes()
    );
}

#[tokio::test]
async fn registryx_denied_is_reported_as_the_registrys_refusal() {
    let upstream = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = upstream.push_image("team/app", "v1", "denied").await;
    cosign.sign(&image.reference, Format::Legacy);
    let proxy = RegistryxProxy::start(&upstream.host).await;
    proxy.deny("team/app", "critical vulnerabilities");

    let (verdict, _) = verify(
        &format!("{}/team/app:v1", proxy.host()),
        &policy_for(&proxy.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    assert_refused_because(
        &verdict,
        &[
            "refused by the registry",
            "DENIED policy violation: critical vulnerabilities",
        ],
    );
}

#[tokio::test]
async fn registryx_credentials_are_sent_to_the_token_endpoint() {
    let upstream = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = upstream.push_image("team/app", "v1", "credentials").await;
    cosign.sign(&image.reference, Format::Legacy);
    let proxy = RegistryxProxy::start(&upstream.host)
        .await
        .with_credentials("robot", "s3cret");
    let reference = format!("{}/team/app:v1", proxy.host());

    let (verdict, _) = verify(
        &reference,
        &policy_for(&proxy.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    assert!(!verdict.admitted(), "admitted without credentials");
    let reasons = format!("{verdict:?}");
    assert!(reasons.contains("not authorized"), "{reasons}");

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"auths":{{"{}":{{"username":"robot","password":"s3cret"}}}}}}"#,
        proxy.host()
    );
    let credentials = registryx_guard::registry::DockerConfig::parse(config.as_bytes()).unwrap();
    let verifier = Verifier::new(VerifierSettings::default(), Some(credentials));
    let policy = policy_for(&proxy.host(), &cosign);
    let verdict = verifier
        .verify(
            &ImageRef::parse(&reference).unwrap(),
            &[policy],
            Instant::now() + Duration::from_secs(10),
        )
        .await;
    assert!(verdict.admitted(), "{verdict:#?}");
    assert!(
        !format!("{verdict:?}").contains("s3cret"),
        "a password leaked into the verdict"
    );
    drop(dir);
}
