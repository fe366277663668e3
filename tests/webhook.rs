//! The admission endpoints at router level, with AdmissionReviews shaped as the API server sends them
//! (tests/data), against a real registry with cosign-signed and unsigned images.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use registryx_guard::admission::{Admission, AdmissionSettings};
use registryx_guard::policy::{ImageSigningPolicy, PolicySnapshot, shared};
use registryx_guard::server::webhook::{WebhookState, router};
use registryx_guard::verify::authority::NoSecrets;
use registryx_guard::verify::{Verifier, VerifierSettings};
use serde_json::Value;
use support::cosign::{Cosign, Format};
use support::fakes::HangingRegistry;
use support::registry::{PushedImage, Registry};
use tower::ServiceExt as _;

struct Fixture {
    registry: Registry,
    signed: PushedImage,
    unsigned: PushedImage,
    router: axum::Router,
}

fn policy_yaml(name: &str, host: &str, pem: &str, extra: &str) -> String {
    let pem = pem.trim_end().replace('\n', "\n        ");
    format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: {name}}}\nspec:\n  images: ['{host}/**']\n  \
         registry: {{insecure: true}}\n  authorities:\n  - name: release\n    key:\n      data: |\n        {pem}\n{extra}"
    )
}

fn router_for(policies: &[String], settings: AdmissionSettings) -> axum::Router {
    router_and_verifier(policies, settings).0
}

fn router_and_verifier(
    policies: &[String],
    settings: AdmissionSettings,
) -> (axum::Router, Arc<Verifier>) {
    registryx_guard::tls::install_crypto_provider();
    let parsed: Vec<ImageSigningPolicy> = policies
        .iter()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect();
    let (snapshot, _) = PolicySnapshot::build(&parsed, &NoSecrets, "registryx-guard", 1);
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let admission = Admission::new(shared(snapshot), verifier.clone(), None, settings, None);
    (router(WebhookState::new(Arc::new(admission))), verifier)
}

async fn fixture(extra: &str) -> Fixture {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "webhook-signed")
        .await;
    let unsigned = registry
        .push_image("team/app", "unsigned", "webhook-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let router = router_for(
        &[policy_yaml(
            "team-signed",
            &registry.host,
            &cosign.public_key_pem(),
            extra,
        )],
        AdmissionSettings::default(),
    );
    Fixture {
        registry,
        signed,
        unsigned,
        router,
    }
}

fn review(fixture_file: &str, images: &[(&str, &str)]) -> String {
    let mut text =
        std::fs::read_to_string(support::repo_root().join("tests/data").join(fixture_file))
            .unwrap();
    for (placeholder, image) in images {
        text = text.replace(placeholder, image);
    }
    text
}

async fn post(router: &axum::Router, path: &str, body: String) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn message(review: &Value) -> &str {
    review["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_pod_with_signed_images_is_admitted_with_audit_annotations() {
    let f = fixture("").await;
    let body = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &f.signed.reference),
            ("APP_IMAGE", &f.signed.reference),
            ("SIDECAR_IMAGE", &f.signed.reference),
        ],
    );
    let (status, review) = post(&f.router, "/validate?timeout=10s", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        review["response"]["uid"],
        "0df28fbd-5f5f-11e8-bc74-36e6bb280816"
    );
    assert_eq!(review["response"]["allowed"], true, "{review:#}");
    let audit = review["response"]["auditAnnotations"]["verified-images"]
        .as_str()
        .unwrap();
    assert!(
        audit.contains(&f.signed.digest) && audit.contains("release"),
        "{audit}"
    );
}

#[tokio::test]
async fn a_pod_with_one_unsigned_image_is_refused_with_the_reason() {
    let f = fixture("").await;
    let body = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &f.signed.reference),
            ("APP_IMAGE", &f.signed.reference),
            ("SIDECAR_IMAGE", &f.unsigned.reference),
        ],
    );
    let (_, review) = post(&f.router, "/validate?timeout=10s", body).await;
    assert_eq!(review["response"]["allowed"], false);
    let message = message(&review);
    for needle in [
        f.unsigned.reference.as_str(),
        f.unsigned.digest.as_str(),
        "policy team-signed",
        "authority release: no signature found",
        "sign it with: cosign sign --key",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    assert!(
        !message.contains(&format!("image {} (", f.signed.reference)),
        "the signed image was reported: {message}"
    );
}

#[tokio::test]
async fn workload_templates_and_ephemeral_containers_are_checked() {
    let f = fixture("").await;
    let (_, refused) = post(
        &f.router,
        "/validate",
        review(
            "deployment-update.json",
            &[
                ("APP_IMAGE", &f.unsigned.reference),
                ("OLD_IMAGE", &f.signed.reference),
            ],
        ),
    )
    .await;
    assert_eq!(
        refused["response"]["allowed"], false,
        "an unsigned Deployment was admitted"
    );
    let (_, admitted) = post(
        &f.router,
        "/validate",
        review(
            "deployment-update.json",
            &[
                ("APP_IMAGE", &f.signed.reference),
                ("OLD_IMAGE", &f.unsigned.reference),
            ],
        ),
    )
    .await;
    assert_eq!(admitted["response"]["allowed"], true);

    let (_, cron) = post(
        &f.router,
        "/validate",
        review(
            "cronjob-create.json",
            &[("APP_IMAGE", &f.unsigned.reference)],
        ),
    )
    .await;
    assert_eq!(
        cron["response"]["allowed"], false,
        "an unsigned CronJob was admitted"
    );

    let (_, debug) = post(
        &f.router,
        "/validate",
        review(
            "pod-ephemeralcontainers-update.json",
            &[
                ("APP_IMAGE", &f.signed.reference),
                ("DEBUG_IMAGE", &f.unsigned.reference),
            ],
        ),
    )
    .await;
    assert_eq!(debug["response"]["allowed"], false);
    assert!(
        message(&debug).contains("ephemeral") || message(&debug).contains(&f.unsigned.reference),
        "{debug:#}"
    );

    let (_, delete) = post(
        &f.router,
        "/validate",
        review("pod-delete.json", &[("APP_IMAGE", &f.unsigned.reference)]),
    )
    .await;
    assert_eq!(
        delete["response"]["allowed"], true,
        "DELETE is never refused"
    );
}

#[tokio::test]
async fn warn_mode_admits_with_a_warning() {
    let f = fixture("  mode: warn\n").await;
    let body = review(
        "cronjob-create.json",
        &[("APP_IMAGE", &f.unsigned.reference)],
    );
    let (_, review) = post(&f.router, "/validate", body).await;
    assert_eq!(review["response"]["allowed"], true);
    let warnings = review["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("fails policy team-signed (warn mode)"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn mutate_pins_verified_images_to_their_digest() {
    let f = fixture("  mutateDigest: true\n").await;
    let body = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &f.signed.reference),
            ("APP_IMAGE", &f.signed.by_digest()),
            ("SIDECAR_IMAGE", &f.unsigned.reference),
        ],
    );
    let (_, review) = post(&f.router, "/mutate", body).await;
    assert_eq!(
        review["response"]["allowed"], true,
        "the mutating webhook never refuses"
    );
    assert_eq!(review["response"]["patchType"], "JSONPatch", "{review:#}");
    // kube serializes the patch bytes as a JSON array of numbers (Go's decoder accepts that for []byte).
    let patch = &review["response"]["patch"];
    let bytes = match patch.as_str() {
        Some(text) => base64_decode(text),
        None => patch
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect(),
    };
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([{"op": "replace", "path": "/spec/initContainers/0/image", "value": format!("{}@{}", f.signed.reference, f.signed.digest)}]),
        "only the verified, unpinned image is patched"
    );
}

#[tokio::test]
async fn unmatched_images_pass_unless_default_deny() {
    let f = fixture("").await;
    let elsewhere = "elsewhere.example/app:1";
    let body = review("cronjob-create.json", &[("APP_IMAGE", elsewhere)]);
    let (_, review) = post(&f.router, "/validate", body.clone()).await;
    assert_eq!(review["response"]["allowed"], true);

    let strict = router_for(
        &[],
        AdmissionSettings {
            default_deny: true,
            ..AdmissionSettings::default()
        },
    );
    let (_, review) = post(&strict, "/validate", body).await;
    assert_eq!(review["response"]["allowed"], false);
    assert!(message(&review).contains("--default-deny"));
    drop(f.registry);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let f = fixture("").await;
    let (status, body) = post(&f.router, "/validate", "{not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.as_str().unwrap().contains("not an AdmissionReview"));

    let (status, review) = post(
        &f.router,
        "/validate",
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(review["response"]["allowed"], false);
    assert!(
        message(&review).contains("holds no usable request"),
        "{review:#}"
    );

    let bad_image = review_with_image("Not A Valid Reference");
    let (_, review) = post(&f.router, "/validate", bad_image).await;
    assert_eq!(review["response"]["allowed"], false);
    assert!(message(&review).contains("does not parse"), "{review:#}");

    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(4 << 20));
    let (status, _) = post(&f.router, "/validate", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn review_with_image(image: &str) -> String {
    review("cronjob-create.json", &[("APP_IMAGE", image)])
}

#[tokio::test]
async fn a_hanging_registry_is_answered_before_the_api_servers_deadline() {
    let hanging = HangingRegistry::start().await;
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let router = router_for(
        &[policy_yaml("hang", &hanging.host(), &pem, "")],
        AdmissionSettings::default(),
    );
    let body = review_with_image(&format!("{}/team/app:v1", hanging.host()));
    let start = Instant::now();
    let (status, review) = post(&router, "/validate?timeout=2s", body).await;
    let elapsed = start.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(review["response"]["allowed"], false);
    assert!(message(&review).contains("no answer within"), "{review:#}");
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after the API server gave up: {elapsed:?}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn rego_rules_see_the_request_and_refuse_with_their_messages() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "rego-signed")
        .await;
    let unsigned = registry
        .push_image("team/app", "unsigned", "rego-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    // The RegistryX guide's module, unchanged (Rego v0), next to a v1 module over the request.
    let rego = r#"  signatureRequired: false
  rego:
    modules:
      - name: guide.rego
        source: |
          package registry

          deny[msg] {
              input.operation == "pull"
              not input.signed
              msg := "Only signed images are allowed"
          }
      - name: people.rego
        source: |
          package registryx.policy
          import rego.v1

          violations contains msg if {
              input.request.userInfo.username == "bob"
              msg := sprintf("user %s may not deploy to %s", [input.user, input.namespace])
          }
"#;
    let router = router_for(
        &[policy_yaml(
            "rego",
            &registry.host,
            &cosign.public_key_pem(),
            rego,
        )],
        AdmissionSettings::default(),
    );

    let (_, answer) = post(
        &router,
        "/validate",
        review(
            "pod-create.json",
            &[
                ("INIT_IMAGE", &signed.reference),
                ("APP_IMAGE", &signed.reference),
                ("SIDECAR_IMAGE", &unsigned.reference),
            ],
        ),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        message(&answer).contains("rego: Only signed images are allowed"),
        "{answer:#}"
    );

    let (_, answer) = post(
        &router,
        "/validate",
        review_with_image_user(&signed.reference),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        message(&answer).contains("rego: user bob may not deploy to payments"),
        "{answer:#}"
    );

    let all_signed = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &signed.reference),
            ("APP_IMAGE", &signed.reference),
            ("SIDECAR_IMAGE", &signed.reference),
        ],
    );
    let (_, answer) = post(&router, "/validate", all_signed).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
}

/// The CronJob fixture is created by bob.
fn review_with_image_user(image: &str) -> String {
    review_with_image(image)
}

#[tokio::test]
async fn registryx_push_events_only_drop_cached_results_and_are_rate_limited() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "events-signed")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let policy = policy_yaml("team-signed", &registry.host, &cosign.public_key_pem(), "");
    let (router, verifier) = router_and_verifier(&[policy], AdmissionSettings::default());
    let body = review_with_image(&signed.by_digest());

    let (_, first) = post(&router, "/validate", body.clone()).await;
    assert_eq!(first["response"]["allowed"], true);
    let (_, cached) = post(&router, "/validate", body.clone()).await;
    assert_eq!(cached["response"]["allowed"], true);
    assert_eq!(
        verifier.cache_stats(),
        (1, 1),
        "the second review was not served from the cache"
    );

    // A push hint for another repository changes nothing; one for this repository drops its results.
    let event = |repository: &str| {
        format!(
            r#"{{"action":"push","repository":"{repository}","tag":"v2","digest":"sha256:00","timestamp":"2026-11-25T00:00:00Z","user":"ci"}}"#
        )
    };
    let (status, _) = post(&router, "/registryx/events", event("other/app")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    post(&router, "/validate", body.clone()).await;
    assert_eq!(verifier.cache_stats(), (2, 1));
    let (status, _) = post(&router, "/registryx/events", event("team/app")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, after) = post(&router, "/validate", body).await;
    assert_eq!(
        after["response"]["allowed"], true,
        "a hint is never evidence, and never a refusal either"
    );
    assert_eq!(
        verifier.cache_stats(),
        (2, 2),
        "the push hint did not drop the cached result"
    );

    let (status, _) = post(&router, "/registryx/events", "not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut limited = false;
    for _ in 0..60 {
        let (status, _) = post(&router, "/registryx/events", event("team/app")).await;
        limited |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "60 events at once were all accepted");
}
