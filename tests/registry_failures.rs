//! Registries that hang, fail, lie or refuse: every case ends in a refusal that names the registry and the
//! step, before the deadline. And RegistryX's own quirks: a token realm that names localhost:5000 and a
//! 403 DENIED from its pull policy.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use registryx_guard::policy::CompiledPolicy;
use registryx_guard::registry::DockerConfig;
use registryx_guard::verify::{Verifier, VerifierSettings};
use support::cosign::Cosign;
use support::fakes::{
    FailingRegistry, HangingRegistry, LyingRegistry, OversizedRegistry, RegistryxProxy,
};
use support::verdicts::{
    PolicyYaml, assert_refused_because, key_policy, legacy_signed_image, verify_with, verify_within,
};

/// A key policy over every image of `host` that also checks every platform of an index, which makes
/// the engine read the image's own manifest.
fn every_platform_policy(host: &str, cosign: &Cosign) -> Arc<CompiledPolicy> {
    PolicyYaml::key(host, &cosign.public_key_pem())
        .spec("multiArch: everyPlatform")
        .compile()
}

#[tokio::test]
async fn a_hanging_registry_is_refused_before_the_deadline() {
    let registry = HangingRegistry::start().await;
    let cosign = Cosign::with_new_key_pair();
    let policy = key_policy(&registry.host(), &cosign);

    let start = Instant::now();
    let verdict = verify_within(
        &format!("{}/team/app:v1", registry.host()),
        &policy,
        Duration::from_millis(1500),
    )
    .await;
    let elapsed = start.elapsed();
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
    let policy = key_policy(&registry.host(), &cosign);
    let verdict = verify_within(
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
    let verdict = verify_within(
        &format!("{}/team/app:v1", registry.host()),
        &every_platform_policy(&registry.host(), &cosign),
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
    let verdict = verify_within(
        &format!("{}/team/app:v1", registry.host()),
        &every_platform_policy(&registry.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    assert_refused_because(&verdict, &["content does not match its digest"]);
}

#[tokio::test]
async fn a_registryx_style_registry_with_a_localhost_token_realm_is_verified() {
    let (upstream, cosign, image) = legacy_signed_image("registryx").await;
    let proxy = RegistryxProxy::start(&upstream.host).await;
    let policy = key_policy(&proxy.host(), &cosign);

    let verdict = verify_within(
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
    let (upstream, cosign, _) = legacy_signed_image("denied").await;
    let proxy = RegistryxProxy::start(&upstream.host).await;
    proxy.deny("team/app", "critical vulnerabilities");

    let verdict = verify_within(
        &format!("{}/team/app:v1", proxy.host()),
        &key_policy(&proxy.host(), &cosign),
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
    let (upstream, cosign, _) = legacy_signed_image("credentials").await;
    let proxy = RegistryxProxy::start(&upstream.host)
        .await
        .with_credentials("robot", "s3cret");
    let reference = format!("{}/team/app:v1", proxy.host());

    let verdict = verify_within(
        &reference,
        &key_policy(&proxy.host(), &cosign),
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
    let credentials = DockerConfig::parse(config.as_bytes()).unwrap();
    let verifier = Verifier::new(VerifierSettings::default(), Some(credentials));
    let policy = key_policy(&proxy.host(), &cosign);
    let verdict = verify_with(&verifier, &reference, &policy, Duration::from_secs(10)).await;
    assert!(verdict.admitted(), "{verdict:#?}");
    assert!(
        !format!("{verdict:?}").contains("s3cret"),
        "a password leaked into the verdict"
    );
    drop(dir);
}
