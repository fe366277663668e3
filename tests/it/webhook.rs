//! The admission endpoints at router level, with AdmissionReviews shaped as the API server sends them
//! (tests/data), against a real registry with cosign-signed and unsigned images.

use registryx_guard::refusal::Reason;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cosign::{Cosign, Format};
use crate::support::fakes::HangingRegistry;
use crate::support::policy::PolicySpec;
use crate::support::registry::{PushedImage, Registry};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use registryx_guard::admission::{Admission, AdmissionSettings, Unmatched};
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{ImageSigningPolicy, Mode, PolicySnapshot, shared};
use registryx_guard::server::push::PushToken;
use registryx_guard::server::webhook::{WebhookState, router};
use registryx_guard::verify::{Verifier, VerifierSettings};
use serde_json::Value;
use tower::ServiceExt as _;

struct Fixture {
    registry: Registry,
    cosign: Cosign,
    signed: PushedImage,
    unsigned: PushedImage,
    router: axum::Router,
}

/// Policy `name`: authority `release` trusts the key `pem` for every image of `host`.
fn policy(name: &str, host: &str, pem: &str) -> PolicySpec {
    PolicySpec::key(host, pem).named(name)
}

fn router_for(policies: &[String], settings: AdmissionSettings) -> axum::Router {
    router_and_verifier(policies, settings).0
}

fn router_and_verifier(
    policies: &[String],
    settings: AdmissionSettings,
) -> (axum::Router, Arc<Verifier>) {
    let (admission, verifier) = admission_for(policies, settings);
    (router(WebhookState::new(admission)), verifier)
}

/// The admission engine over `policies`, and its verifier.
fn admission_for(
    policies: &[String],
    settings: AdmissionSettings,
) -> (Arc<Admission>, Arc<Verifier>) {
    registryx_guard::tls::install_crypto_provider();
    let parsed: Vec<ImageSigningPolicy> = policies
        .iter()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect();
    let (snapshot, _) = PolicySnapshot::build(&parsed, &NoSecrets, "registryx-guard", 1);
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let admission = Admission::new(shared(snapshot), verifier.clone(), None, settings, None);
    (Arc::new(admission), verifier)
}

const EVENTS_TOKEN: &str = "webhook-test-events-token-0123";

/// A router whose push events are on (token [`EVENTS_TOKEN`]), its state (to flush events at once)
/// and its verifier.
fn events_router(policies: &[String]) -> (axum::Router, WebhookState, Arc<Verifier>) {
    let (admission, verifier) = admission_for(policies, AdmissionSettings::default());
    let state =
        WebhookState::with_events_token(admission, PushToken::new(Some(EVENTS_TOKEN)).unwrap());
    (router(state.clone()), state, verifier)
}

fn push_event(repository: &str) -> String {
    format!(
        r#"{{"action":"push","repository":"{repository}","tag":"signed","digest":"sha256:00","timestamp":"2026-11-25T00:00:00Z","user":"ci"}}"#
    )
}

/// [`fixture_with`] the policy unchanged.
async fn fixture() -> Fixture {
    fixture_with(|policy| policy).await
}

/// A registry with a signed and an unsigned image, and a router whose one policy `team-signed`
/// (changed by `tweak`) trusts the key that signed.
async fn fixture_with(tweak: impl FnOnce(PolicySpec) -> PolicySpec) -> Fixture {
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
        &[tweak(policy(
            "team-signed",
            &registry.host,
            &cosign.public_key_pem(),
        ))
        .yaml()],
        AdmissionSettings::default(),
    );
    Fixture {
        registry,
        cosign,
        signed,
        unsigned,
        router,
    }
}

fn review(fixture_file: &str, images: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(
        crate::support::repo_root()
            .join("tests/data")
            .join(fixture_file),
    )
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

/// What the API server does: the mutating webhook first, its patch applied to the object, then the
/// validating webhook on the patched object. Returns the validating answer and the object it saw.
async fn admit(router: &axum::Router, body: String) -> (StatusCode, Value) {
    let (admitted, _) = admit_object(router, body).await;
    admitted
}

async fn admit_object(router: &axum::Router, body: String) -> ((StatusCode, Value), Value) {
    admit_across(router, router, body).await
}

/// As the API server calls two replicas behind one Service: `/mutate` on one, `/validate` of the
/// mutated object on the other.
async fn admit_across(
    mutating: &axum::Router,
    validating: &axum::Router,
    body: String,
) -> ((StatusCode, Value), Value) {
    let mut request: Value = serde_json::from_str(&body).unwrap();
    let (status, mutated) = post(mutating, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK, "{mutated:#}");
    assert_eq!(
        mutated["response"]["allowed"], true,
        "mutation never refuses"
    );
    if let Some(operations) = patch_of(&mutated) {
        json_patch::patch(&mut request["request"]["object"], &operations).unwrap();
    }
    let object = request["request"]["object"].clone();
    (
        post(validating, "/validate", request.to_string()).await,
        object,
    )
}

fn patch_of(review: &Value) -> Option<json_patch::Patch> {
    let patch = &review["response"]["patch"];
    if patch.is_null() {
        return None;
    }
    // kube serializes the patch bytes as a JSON array of numbers (Go's decoder accepts that for []byte).
    let bytes = match patch.as_str() {
        Some(text) => base64_decode(text),
        None => patch
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect(),
    };
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn message(review: &Value) -> &str {
    review["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

/// Refused for exactly `reasons`: the review's `refusal-reasons` audit annotation, the typed reasons
/// of its refusals.
#[track_caller]
fn assert_refused_for(review: &Value, reasons: &[Reason]) {
    assert_eq!(review["response"]["allowed"], false, "{review:#}");
    let labels: Vec<&str> = reasons.iter().map(|r| r.label()).collect();
    assert_eq!(
        review["response"]["auditAnnotations"]["refusal-reasons"],
        labels.join(","),
        "{review:#}"
    );
}

#[tokio::test]
async fn a_pod_with_signed_images_is_admitted_with_audit_annotations() {
    let f = fixture().await;
    let body = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &f.signed.reference),
            ("APP_IMAGE", &f.signed.reference),
            ("SIDECAR_IMAGE", &f.signed.reference),
        ],
    );
    let (status, review) = admit(&f.router, body).await;
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
    let f = fixture().await;
    let body = review(
        "pod-create.json",
        &[
            ("INIT_IMAGE", &f.signed.reference),
            ("APP_IMAGE", &f.signed.reference),
            ("SIDECAR_IMAGE", &f.unsigned.reference),
        ],
    );
    let (_, review) = admit(&f.router, body).await;
    assert_refused_for(&review, &[Reason::NoSignature]);
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
    let f = fixture().await;
    let (_, refused) = admit(
        &f.router,
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
    let (_, admitted) = admit(
        &f.router,
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

    let (_, cron) = admit(
        &f.router,
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

    let (_, debug) = admit(
        &f.router,
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

    let (_, delete) = admit(
        &f.router,
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
    let f = fixture_with(|policy| policy.mode(Mode::Warn)).await;
    let body = review(
        "cronjob-create.json",
        &[("APP_IMAGE", &f.unsigned.reference)],
    );
    let (_, review) = admit(&f.router, body).await;
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
    let f = fixture().await;
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
    let patch = serde_json::to_value(patch_of(&review).unwrap()).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([{"op": "replace", "path": "/spec/initContainers/0/image", "value": format!("{}@{}", f.signed.reference, f.signed.digest)}]),
        "only the verified, unpinned image is patched"
    );
}

#[tokio::test]
async fn unmatched_images_are_refused_unless_the_server_allows_or_warns() {
    let f = fixture().await;
    let elsewhere = "elsewhere.example/app:1";
    let body = review("cronjob-create.json", &[("APP_IMAGE", elsewhere)]);
    let (_, review) = post(&f.router, "/validate", body.clone()).await;
    assert_refused_for(&review, &[Reason::NoPolicy]);
    assert!(
        message(&review).contains("governed by no ImageSigningPolicy"),
        "{review:#}"
    );

    for (unmatched, warned) in [(Unmatched::Warn, true), (Unmatched::Allow, false)] {
        let lenient = router_for(
            &[],
            AdmissionSettings {
                unmatched,
                ..AdmissionSettings::default()
            },
        );
        let (_, review) = post(&lenient, "/validate", body.clone()).await;
        assert_eq!(review["response"]["allowed"], true, "{unmatched:?}");
        assert_eq!(
            review["response"]["warnings"].is_array(),
            warned,
            "{unmatched:?}: {review:#}"
        );
    }
    drop(f.registry);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let f = fixture().await;
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
    assert_refused_for(&review, &[Reason::InvalidReference]);
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
        &[policy("hang", &hanging.host(), &pem).yaml()],
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
    const GUIDE: &str = r#"package registry

deny[msg] {
    input.operation == "pull"
    not input.signed
    msg := "Only signed images are allowed"
}
"#;
    const PEOPLE: &str = r#"package registryx.policy
import rego.v1

violations contains msg if {
    input.request.userInfo.username == "bob"
    msg := sprintf("user %s may not deploy to %s", [input.user, input.namespace])
}
"#;
    let router = router_for(
        &[policy("rego", &registry.host, &cosign.public_key_pem())
            .with(|spec| spec.signature_required = false)
            .rego(&[("guide.rego", GUIDE), ("people.rego", PEOPLE)])
            .yaml()],
        AdmissionSettings::default(),
    );

    let (_, answer) = admit(
        &router,
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
    assert_refused_for(&answer, &[Reason::Rego]);
    assert!(
        message(&answer).contains("rego: Only signed images are allowed"),
        "{answer:#}"
    );

    let (_, answer) = admit(&router, review_with_image_user(&signed.reference)).await;
    assert_refused_for(&answer, &[Reason::Rego]);
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
    let (_, answer) = admit(&router, all_signed).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
}

/// The CronJob fixture is created by bob.
fn review_with_image_user(image: &str) -> String {
    review_with_image(image)
}

#[tokio::test]
async fn registryx_push_events_are_authenticated_bounded_and_only_drop_cached_results() {
    registryx_guard::tls::install_crypto_provider();
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "events-signed")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let (admission, verifier) = admission_for(
        &[policy("team-signed", &registry.host, &cosign.public_key_pem()).yaml()],
        AdmissionSettings::default(),
    );
    let token = "events-token-0123456789abcdef";
    let state = WebhookState::with_events_token(admission, PushToken::new(Some(token)).unwrap());
    let router = router(state.clone());
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

    let event = |repository: &str| {
        format!(
            r#"{{"action":"push","repository":"{repository}","tag":"v2","digest":"sha256:00","timestamp":"2026-11-25T00:00:00Z","user":"ci"}}"#
        )
    };
    // Without the token, nothing is read and nothing is dropped.
    let (status, _) = post(&router, "/registryx/events", event("team/app")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &router,
        "/registryx/events?token=wrong-token-0123456789",
        event("team/app"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    state.flush_events();
    post(&router, "/validate", body.clone()).await;
    assert_eq!(
        verifier.cache_stats(),
        (2, 1),
        "an unauthenticated event dropped the cache"
    );

    // A hint for another repository changes nothing; one for this repository drops its results, by the
    // query token RegistryX's WEBHOOK_URL carries or by a bearer header.
    let with_token = format!("/registryx/events?token={token}");
    let (status, _) = post(&router, &with_token, event("other/app")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    state.flush_events();
    post(&router, "/validate", body.clone()).await;
    assert_eq!(verifier.cache_stats(), (3, 1));
    let (status, _) = post_with_header(
        &router,
        "/registryx/events",
        ("authorization", &format!("Bearer {token}")),
        event("team/app"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    state.flush_events();
    let (_, after) = post(&router, "/validate", body.clone()).await;
    assert_eq!(
        after["response"]["allowed"], true,
        "a hint is never evidence, and never a refusal either"
    );
    assert_eq!(
        verifier.cache_stats(),
        (3, 2),
        "the push hint did not drop the cached result"
    );

    // Bounded: names outside the distribution grammar, huge names, huge bodies.
    for (body, expected) in [
        ("not json".to_owned(), StatusCode::BAD_REQUEST),
        (event("Team/App"), StatusCode::BAD_REQUEST),
        (event(&"a".repeat(3 << 20)), StatusCode::PAYLOAD_TOO_LARGE),
        (
            event("a/".repeat(200).trim_end_matches('/')),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _) = post(&router, &with_token, body).await;
        assert_eq!(status, expected);
    }
    // A flood of genuine events is coalesced, never refused.
    for n in 0..3000 {
        let (status, _) = post(&router, &with_token, event(&format!("flood/app{n}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    state.flush_events();

    // Without a configured token the endpoint is off.
    let (status, _) = post(
        &router_for(&[], AdmissionSettings::default()),
        "/registryx/events",
        event("team/app"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn post_with_header(
    router: &axum::Router,
    path: &str,
    (name, value): (&str, &str),
    body: String,
) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .header(name, value)
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    (response.status(), Value::Null)
}

#[tokio::test]
async fn one_object_naming_an_image_many_times_costs_one_verification_and_a_cap_holds() {
    let f = fixture().await;
    let (router, verifier) = router_and_verifier(
        &[policy("team-signed", &f.registry.host, &f.cosign.public_key_pem()).yaml()],
        AdmissionSettings::default(),
    );
    let containers: Vec<Value> = (0..2000)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": f.unsigned.reference}))
        .collect();
    let mut body: Value = serde_json::from_str(&review_with_image("x")).unwrap();
    body["request"]["object"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"] =
        Value::from(containers);
    let (_, refused) = post(&router, "/validate", body.to_string()).await;
    assert_eq!(refused["response"]["allowed"], false);
    assert_eq!(
        message(&refused).lines().count(),
        1,
        "one refusal for one image"
    );
    // One verification: resolve, three discovery reads, and (a refusal) the tag listing that looks
    // for a re-pushed tag and the resolution of the repository's two tags.
    assert!(
        verifier.registry_requests() <= 7,
        "2000 copies of one image made {} registry requests",
        verifier.registry_requests()
    );

    let many: Vec<Value> = (0..65)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": format!("{}/team/app:{i}", f.registry.host)}))
        .collect();
    body["request"]["object"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"] =
        Value::from(many);
    let before = verifier.registry_requests();
    let (_, refused) = post(&router, "/validate", body.to_string()).await;
    assert_refused_for(&refused, &[Reason::TooManyImages]);
    assert!(
        message(&refused).contains("names 65 distinct images")
            && message(&refused).contains("at most 64"),
        "{refused:#}"
    );
    assert_eq!(
        verifier.registry_requests(),
        before,
        "over the cap, nothing is fetched"
    );
}

/// The registry's port, and the same image spelled with another host name for the same place.
fn respell(image: &str, registry_host: &str, spelling: &str) -> String {
    image.replacen(registry_host, spelling, 1)
}

#[tokio::test]
async fn every_spelling_of_a_governed_registry_is_governed() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "spelling-signed")
        .await;
    let unsigned = registry
        .push_image("team/app", "unsigned", "spelling-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let port = registry.host.rsplit_once(':').unwrap().1;
    // The policy names the registry as `LocalHost:<port>`; the server admits unmatched images, so a
    // spelling that escaped the policy would be admitted: every refusal below proves it is governed.
    let policy = policy(
        "team-signed",
        &format!("LocalHost:{port}/team"),
        &cosign.public_key_pem(),
    )
    .yaml();
    let lenient = router_for(
        std::slice::from_ref(&policy),
        AdmissionSettings {
            unmatched: Unmatched::Allow,
            ..AdmissionSettings::default()
        },
    );
    for spelling in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("LocalHost:0{port}"),
        format!("localhost:00{port}"),
    ] {
        let image = respell(&unsigned.reference, &registry.host, &spelling);
        let (_, refused) = admit(&lenient, review_with_image(&image)).await;
        assert_eq!(refused["response"]["allowed"], false, "{image} got in");
        assert!(
            message(&refused).contains("no signature found"),
            "{image}: {refused:#}"
        );
        let by_digest = respell(&unsigned.by_digest(), &registry.host, &spelling);
        let (_, refused) = admit(&lenient, review_with_image(&by_digest)).await;
        assert_eq!(refused["response"]["allowed"], false, "{by_digest} got in");

        let image = respell(&signed.reference, &registry.host, &spelling);
        let ((_, admitted), object) = admit_object(&lenient, review_with_image(&image)).await;
        assert_eq!(
            admitted["response"]["allowed"], true,
            "{image}: {admitted:#}"
        );
        let stored = object.pointer("/spec/jobTemplate/spec/template/spec/containers/0/image");
        assert_eq!(
            stored.and_then(Value::as_str),
            Some(format!("{image}@{}", signed.digest).as_str()),
            "pinned as written, to the verified digest"
        );
    }
    // The IP literal of the same registry cannot be recognised by spelling: with the server's default,
    // no policy vouching for it means it is refused.
    let strict = router_for(&[policy], AdmissionSettings::default());
    let (_, refused) = admit(&strict, review_with_image(&unsigned.reference)).await;
    assert_refused_for(&refused, &[Reason::NoPolicy]);
    assert!(
        message(&refused).contains("governed by no ImageSigningPolicy"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn a_tag_that_reaches_validation_unpinned_is_refused() {
    let f = fixture().await;
    let (_, refused) = post(
        &f.router,
        "/validate",
        review_with_image(&f.signed.reference),
    )
    .await;
    assert_eq!(refused["response"]["allowed"], false, "{refused:#}");
    let text = message(&refused);
    for needle in [
        "policy team-signed admits only what is pinned",
        &format!("{}@{}", f.signed.reference, f.signed.digest),
        "MutatingWebhookConfiguration",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    let (_, admitted) = post(
        &f.router,
        "/validate",
        review_with_image(&f.signed.by_digest()),
    )
    .await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
    let tag_and_digest = format!("{}@{}", f.signed.reference, f.signed.digest);
    let (_, admitted) = post(&f.router, "/validate", review_with_image(&tag_and_digest)).await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
}

#[tokio::test]
async fn policies_that_do_not_pin_record_the_digest_and_refuse_a_moved_tag() {
    let f = fixture_with(|policy| policy.mutate_digest(false)).await;
    let (router, state, _) =
        events_router(&[
            policy("team-signed", &f.registry.host, &f.cosign.public_key_pem())
                .mutate_digest(false)
                .yaml(),
        ]);
    let ((_, admitted), object) =
        admit_object(&router, review_with_image(&f.signed.reference)).await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
    let template = &object["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["image"], f.signed.reference,
        "the image field is left as written"
    );
    let recorded = template["metadata"]["annotations"]["registryx.io/verified-digests"]
        .as_str()
        .unwrap_or_default();
    assert!(recorded.contains(&f.signed.digest), "{object:#}");

    // The tag moves to other bytes, signed by the trusted key as well: verification alone would pass,
    // but the workload's recorded digest no longer holds.
    let moved = f
        .registry
        .push_image("team/app", "signed", "moved-after-admission")
        .await;
    assert_ne!(moved.digest, f.signed.digest);
    f.cosign.sign(&moved.reference, Format::Legacy);
    let mut body: Value = serde_json::from_str(&review_with_image(&f.signed.reference)).unwrap();
    body["request"]["object"] = object;
    // RegistryX announces the push: the tag's cached digest is dropped at once.
    let (status, _) = post(
        &router,
        &format!("/registryx/events?token={EVENTS_TOKEN}"),
        push_event("team/app"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    state.flush_events();
    let (_, refused) = admit(&router, body.to_string()).await;
    assert_refused_for(&refused, &[Reason::TagMoved]);
    assert!(message(&refused).contains("the tag moved"), "{refused:#}");
}

#[tokio::test]
async fn updates_that_change_no_image_are_not_checked_again() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let unsigned = registry
        .push_image("team/app", "unsigned", "update-unsigned")
        .await;
    let signed = registry
        .push_image("team/app", "signed", "update-signed")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let policy = policy("team-signed", &registry.host, &cosign.public_key_pem()).yaml();
    let (router, verifier) = router_and_verifier(&[policy], AdmissionSettings::default());
    let update =
        |new: &str, old: &str| review("pod-update.json", &[("NEW_IMAGE", new), ("OLD_IMAGE", old)]);

    // A finalizer removed from a pod whose image would be refused today: admitted, no registry call.
    let (_, admitted) = post(
        &router,
        "/validate",
        update(&unsigned.reference, &unsigned.reference),
    )
    .await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
    assert_eq!(
        verifier.registry_requests(),
        0,
        "a metadata-only update reached the registry"
    );

    // An update that changes the image is checked.
    let (_, refused) = post(
        &router,
        "/validate",
        update(&unsigned.reference, &signed.by_digest()),
    )
    .await;
    assert_eq!(refused["response"]["allowed"], false, "{refused:#}");
    assert!(
        message(&refused).contains("no signature found"),
        "{refused:#}"
    );

    // A debug container added to a running pod (pods/ephemeralcontainers) is checked on its own: the
    // containers already running are not judged again.
    let with_debug = |debug: &str| {
        let mut body: Value =
            serde_json::from_str(&update(&unsigned.reference, &unsigned.reference)).unwrap();
        body["request"]["object"]["spec"]["ephemeralContainers"] =
            serde_json::json!([{"name": "debug", "image": debug}]);
        body.to_string()
    };
    let (_, admitted) = post(&router, "/validate", with_debug(&signed.by_digest())).await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
    let (_, refused) = post(&router, "/validate", with_debug(&unsigned.by_digest())).await;
    assert_eq!(refused["response"]["allowed"], false, "{refused:#}");
    assert!(
        message(&refused).contains("ephemeralContainers[debug]")
            || message(&refused).contains(&unsigned.digest),
        "{refused:#}"
    );
}

/// A workload of `kind` whose pod template runs `image` with the env vars `env`, at `scale`: the
/// replicas of a Deployment or StatefulSet, the parallelism of a Job, `suspend` (scale 0) of a
/// CronJob, a label of a DaemonSet's own metadata: for each kind, a change that starts no new pod.
fn workload(kind: &str, image: &str, env: &[(&str, &str)], scale: u32) -> Value {
    let env: Vec<Value> = env
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    let template = serde_json::json!({
        "metadata": {"labels": {"app": "api"}, "creationTimestamp": null},
        "spec": {"restartPolicy": if matches!(kind, "Job" | "CronJob") { "Never" } else { "Always" },
                 "containers": [{"name": "api", "image": image, "env": env}]},
    });
    let (api_version, spec) = match kind {
        "CronJob" => (
            "batch/v1",
            serde_json::json!({"schedule": "0 3 * * *", "suspend": scale == 0,
                               "jobTemplate": {"spec": {"template": template}}}),
        ),
        "Job" => (
            "batch/v1",
            serde_json::json!({"parallelism": scale, "template": template}),
        ),
        "DaemonSet" => (
            "apps/v1",
            serde_json::json!({"selector": {"matchLabels": {"app": "api"}}, "template": template}),
        ),
        _ => (
            "apps/v1",
            serde_json::json!({"replicas": scale, "selector": {"matchLabels": {"app": "api"}}, "template": template}),
        ),
    };
    serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "api", "namespace": "payments", "labels": {"scale": scale.to_string()}},
        "spec": spec,
    })
}

/// The AdmissionReview the API server sends for an UPDATE of a workload from `old` to `new`.
fn workload_update(old: Value, new: Value) -> String {
    let kind = new["kind"].as_str().unwrap().to_owned();
    let (group, version) = new["apiVersion"].as_str().unwrap().split_once('/').unwrap();
    let gvk = serde_json::json!({"group": group, "version": version, "kind": kind});
    let gvr = serde_json::json!({"group": group, "version": version,
                                 "resource": format!("{}s", kind.to_lowercase())});
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "a1b2c3d4-0000-4000-8000-0000000000aa",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": "api",
            "namespace": "payments",
            "operation": "UPDATE",
            "userInfo": {"username": "system:serviceaccount:ci:deployer"},
            "object": new,
            "oldObject": old,
            "dryRun": false,
        },
    })
    .to_string()
}

#[tokio::test]
async fn a_changed_pod_template_is_checked_whole_and_a_scale_is_not() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let unsigned = registry
        .push_image("team/app", "unsigned", "rollout-unsigned")
        .await;
    let signed = registry
        .push_image("team/app", "signed", "rollout-signed")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let policy = policy("team-signed", &registry.host, &cosign.public_key_pem()).yaml();
    let (router, verifier) = router_and_verifier(&[policy], AdmissionSettings::default());
    let kept = unsigned.by_digest();
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"] {
        // `kubectl apply` of a new env var on a workload that runs an image signed by no one (admitted
        // before the policy existed): a new rollout, refused here rather than at the ReplicaSet's or
        // Pod's CREATE, where the user does not look.
        let (_, refused) = admit(
            &router,
            workload_update(
                workload(kind, &kept, &[], 2),
                workload(kind, &kept, &[("MODE", "fast")], 2),
            ),
        )
        .await;
        assert_eq!(refused["response"]["allowed"], false, "{kind}: {refused:#}");
        assert!(
            message(&refused).contains(&unsigned.digest)
                && message(&refused).contains("no signature found"),
            "{kind}: {refused:#}"
        );

        // Scaling the same workload (or suspending it, or labelling it) starts no new pod template:
        // admitted without a registry call, so an old workload can always be scaled down.
        let before = verifier.registry_requests();
        let (_, admitted) = admit(
            &router,
            workload_update(
                workload(kind, &kept, &[("MODE", "fast")], 2),
                workload(kind, &kept, &[("MODE", "fast")], 0),
            ),
        )
        .await;
        assert_eq!(
            admitted["response"]["allowed"], true,
            "{kind}: {admitted:#}"
        );
        assert_eq!(
            verifier.registry_requests(),
            before,
            "{kind}: scale checked"
        );

        // A new rollout of a tag that was never pinned: the mutating webhook pins it as it would at
        // CREATE, and validation admits what it pinned.
        let ((_, admitted), object) = admit_object(
            &router,
            workload_update(
                workload(kind, &signed.reference, &[], 2),
                workload(kind, &signed.reference, &[("MODE", "fast")], 2),
            ),
        )
        .await;
        assert_eq!(
            admitted["response"]["allowed"], true,
            "{kind}: {admitted:#}"
        );
        let spec = registryx_guard::admission::pod_spec_pointer(kind).unwrap();
        assert_eq!(
            object
                .pointer(&format!("{spec}/containers/0/image"))
                .unwrap(),
            &Value::from(format!("{}@{}", signed.reference, signed.digest)),
            "{kind}: {object:#}"
        );
    }
}

#[tokio::test]
async fn a_namespace_missing_from_the_cache_is_never_treated_as_unlabelled() {
    registryx_guard::tls::install_crypto_provider();
    let (store, _writer) =
        kube::runtime::reflector::store::<k8s_openapi::api::core::v1::Namespace>();
    let (snapshot, _) = PolicySnapshot::build(&[], &NoSecrets, "registryx-guard", 1);
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let settings = AdmissionSettings {
        unmatched: Unmatched::Allow,
        ..AdmissionSettings::default()
    };
    let admission = Admission::new(shared(snapshot), verifier, Some(store), settings, None);
    let router = router(WebhookState::new(Arc::new(admission)));
    let (_, refused) = post(&router, "/validate", review_with_image("r.example/app:1")).await;
    assert_eq!(refused["response"]["allowed"], false, "{refused:#}");
    assert!(
        message(&refused).contains("namespace payments are not known yet"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn a_tags_digest_is_shared_for_seconds_and_dropped_by_a_push_event() {
    let f = fixture().await;
    let (router, state, verifier) =
        events_router(&[
            policy("team-signed", &f.registry.host, &f.cosign.public_key_pem())
                .mutate_digest(false)
                .yaml(),
        ]);
    let body = review_with_image(&f.signed.reference);
    let (_, first) = post(&router, "/validate", body.clone()).await;
    assert_eq!(first["response"]["allowed"], true, "{first:#}");
    let after_first = verifier.registry_requests();
    for _ in 0..5 {
        let (_, again) = post(&router, "/validate", body.clone()).await;
        assert_eq!(again["response"]["allowed"], true);
    }
    assert_eq!(
        verifier.registry_requests(),
        after_first,
        "a cached review by tag asked the registry again"
    );
    let (status, _) = post(
        &router,
        &format!("/registryx/events?token={EVENTS_TOKEN}"),
        push_event("team/app"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    state.flush_events();
    let (_, after_push) = post(&router, "/validate", body).await;
    assert_eq!(after_push["response"]["allowed"], true);
    assert!(
        verifier.registry_requests() > after_first,
        "the push event did not drop the tag's digest"
    );
}

/// Two replicas with different cache states: A cached a refusal of a tag before it was signed (no push
/// event reached it), B never saw the image. Whichever replica mutates, the validating one decides as
/// it would alone: A's mutation reads the refusal again instead of leaving the tag unpinned for B to
/// refuse as `unpinned`. A refusal read within the last second is reused, so a crowd of unsigned pods
/// costs the registry one read per image per second through `/mutate`.
#[tokio::test]
async fn mutate_and_validate_on_different_replicas_agree() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "late", "agree-late").await;
    let never = registry
        .push_image("team/app", "never", "agree-never")
        .await;
    let policies = [policy("team-signed", &registry.host, &cosign.public_key_pem()).yaml()];
    let (a, verifier_a) = router_and_verifier(&policies, AdmissionSettings::default());
    let (b, _) = router_and_verifier(&policies, AdmissionSettings::default());
    let body = review_with_image(&image.reference);

    let ((_, refused), _) = admit_across(&a, &a, body.clone()).await;
    assert_refused_for(&refused, &[Reason::NoSignature]);
    cosign.sign(&image.reference, Format::Legacy);
    tokio::time::sleep(registryx_guard::verify::RECHECKED_REFUSAL_AGE + Duration::from_millis(200))
        .await;

    // A still holds its refusal for validation (30 s, no event)...
    let (_, stale) = post(&a, "/validate", body.clone()).await;
    assert_refused_for(&stale, &[Reason::NoSignature]);
    // ...but its mutation reads again and pins, so B admits what B verifies.
    let ((_, admitted), object) = admit_across(&a, &b, body.clone()).await;
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
    let pinned =
        object["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(pinned, format!("{}@{}", image.reference, image.digest));
    // A's read replaced its stale refusal: A now admits alone as well.
    let ((_, alone), _) = admit_across(&a, &a, body).await;
    assert_eq!(alone["response"]["allowed"], true, "{alone:#}");

    // An image that stays unsigned: twenty mutations within the second cost at most one read.
    let crowd = review_with_image(&never.reference);
    let ((_, first), _) = admit_across(&a, &a, crowd.clone()).await;
    assert_refused_for(&first, &[Reason::NoSignature]);
    let before = verifier_a.registry_requests();
    for _ in 0..20 {
        let (_, mutated) = post(&a, "/mutate", crowd.clone()).await;
        assert!(patch_of(&mutated).is_none(), "an unsigned tag was pinned");
    }
    let reads = verifier_a.registry_requests() - before;
    assert!(
        reads <= 4,
        "twenty mutations of an unsigned image cost {reads} registry requests"
    );
}

/// A policy that requires a provenance attestation: the signed image without one is refused through
/// the webhook with the typed reason, the missing type and the `cosign attest` remedy; once attested,
/// the same image is admitted.
#[tokio::test]
async fn a_required_attestation_refuses_until_the_image_is_attested() {
    let f = fixture_with(|policy| policy.requiring_attestations(["slsaprovenance1"])).await;
    let (_, refused) = admit(&f.router, review_with_image(&f.signed.reference)).await;
    assert_refused_for(&refused, &[Reason::AttestationMissing]);
    let message = message(&refused);
    for needle in [
        "no attestation of type \"https://slsa.dev/provenance/v1\"",
        "attest it with: cosign attest --key <the private key of authority release> --type https://slsa.dev/provenance/v1",
        f.signed.digest.as_str(),
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }

    f.cosign.attest(
        &f.signed.reference,
        "slsaprovenance1",
        &serde_json::json!({"runDetails": {"builder": {"id": "https://ci.example/b"}}}),
        Format::Legacy,
    );
    let mut admitted = Value::Null;
    for _ in 0..40 {
        admitted = admit(&f.router, review_with_image(&f.signed.reference))
            .await
            .1;
        if admitted["response"]["allowed"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(admitted["response"]["allowed"], true, "{admitted:#}");
}
