//! The admission path in-process (BENCHMARKS.md, section 1, "where the time goes"): the webhook's axum
//! router, built with a policy snapshot as tests/it/webhook.rs builds it, answering the AdmissionReview of
//! tests/data/pod-create.json (three containers, three cosign-signed images of a real registry) from a
//! warm cache. No TLS, no HTTP connection and no log subscriber: what is left is the JSON in and out, the
//! image extraction, policy matching and the cache lookups. Next to it, the parts that profile high.
//!
//! `cargo bench --bench admission`; `cargo test --all-targets` runs each function once (criterion's test
//! mode), which starts the registry and cosign of the test harness (`make tools`) for a few seconds. The
//! same review of the same images attested, under a policy that requires the provenance (and then with a
//! Rego rule reading it), is the cached figure of BENCHMARKS.md section 11.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use registryx_guard::admission::{Admission, AdmissionSettings};
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{PolicySnapshot, shared};
use registryx_guard::registry::ImageRef;
use registryx_guard::server::webhook::{WebhookState, router};
use registryx_guard::verify::{Verifier, VerifierSettings};
use support::cosign::{Cosign, Format};
use support::policy::PolicySpec;
use support::registry::Registry;
use tower::ServiceExt as _;

const BUILDER: &str = "https://github.com/acme/.github/workflows/release.yml@refs/heads/main";

/// Every provenance must name the release workflow as its builder (as policies/slsa-provenance does).
const BUILDER_RULE: &str = "package registry\nimport rego.v1\n\n\
    deny contains msg if {\n\
      some p in input.attestations[\"https://slsa.dev/provenance/v1\"]\n\
      p.predicate.runDetails.builder.id != \"https://github.com/acme/.github/workflows/release.yml@refs/heads/main\"\n\
      msg := \"untrusted builder\"\n\
    }\n\
    deny contains \"no provenance\" if not input.attestations[\"https://slsa.dev/provenance/v1\"]\n";

/// POSTs `body` to /validate and returns the answer's bytes.
async fn validate(router: &axum::Router, body: &str) -> axum::body::Bytes {
    let response = router
        .clone()
        .oneshot(
            Request::post("/validate?timeout=10s")
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .expect("a valid request"),
        )
        .await
        .expect("the router answers");
    axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body")
}

fn review(images: [&str; 3]) -> String {
    let template = std::fs::read_to_string(support::repo_root().join("tests/data/pod-create.json"))
        .expect("the fixture");
    ["INIT_IMAGE", "APP_IMAGE", "SIDECAR_IMAGE"]
        .iter()
        .zip(images)
        .fold(template, |text, (placeholder, image)| {
            text.replace(placeholder, image)
        })
}

fn admission(c: &mut Criterion) {
    registryx_guard::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    // A real registry with three images signed by cosign (the legacy .sig format).
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let pushed = runtime.block_on(async {
        let mut pushed = Vec::new();
        for name in ["init", "app", "sidecar"] {
            pushed.push(
                registry
                    .push_image(&format!("bench/{name}"), "1", name)
                    .await,
            );
        }
        pushed
    });
    for image in &pushed {
        cosign.sign(&image.reference, Format::Legacy);
    }
    // By-tag reviews go straight to /validate here, with no mutating webhook in front to pin them: the
    // policy records the digest instead of pinning (a pinning policy would refuse them as unpinned).
    let policy = PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .mutate_digest(false)
        .policy();
    let (snapshot, _) = PolicySnapshot::build(&[policy], &NoSecrets, "registryx-guard", 1);
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let admission = Admission::new(
        shared(snapshot),
        verifier.clone(),
        None,
        AdmissionSettings::default(),
        None,
    );
    let router = router(WebhookState::new(Arc::new(admission)));

    let by_digest: Vec<String> = pushed.iter().map(|i| i.by_digest()).collect();
    let by_tag: Vec<String> = pushed.iter().map(|i| i.reference.clone()).collect();
    let digest_review = review([&by_digest[0], &by_digest[1], &by_digest[2]]);
    let tag_review = review([&by_tag[0], &by_tag[1], &by_tag[2]]);
    // Warm the cache, and check that the answer is the one measured.
    for body in [&digest_review, &tag_review] {
        let answer = runtime.block_on(validate(&router, body));
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
    }
    let requests = verifier.registry_requests();

    let mut group = c.benchmark_group("admission");
    group.bench_function("cached review, 3 images by digest", |b| {
        b.iter(|| runtime.block_on(validate(&router, black_box(&digest_review))))
    });
    assert_eq!(
        verifier.registry_requests(),
        requests,
        "a cached review by digest must not reach the registry"
    );
    group.bench_function("cached review, 3 images by tag (3 registry HEADs)", |b| {
        b.iter(|| runtime.block_on(validate(&router, black_box(&tag_review))))
    });

    // The same images attested (`cosign attest --type slsaprovenance1`, legacy .att), under a policy
    // whose authority requires the provenance: the cost of a required attestation on a cached review
    // (the verified statements ride in the cached result), then with a Rego rule reading its predicate.
    for image in &pushed {
        cosign.attest(
            &image.reference,
            "slsaprovenance1",
            &serde_json::json!({"runDetails": {"builder": {"id": BUILDER}}}),
            Format::Legacy,
        );
    }
    for (name, rego) in [
        (
            "cached review, 3 images by digest, provenance required",
            None,
        ),
        (
            "cached review, 3 images by digest, provenance required and read by Rego",
            Some(BUILDER_RULE),
        ),
    ] {
        let mut spec = PolicySpec::key(&registry.host, &cosign.public_key_pem())
            .mutate_digest(false)
            .requiring_attestations(["slsaprovenance1"]);
        if let Some(rule) = rego {
            spec = spec.rego(&[("builder.rego", rule)]);
        }
        let (snapshot, _) =
            PolicySnapshot::build(&[spec.policy()], &NoSecrets, "registryx-guard", 1);
        let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
        let admission = Admission::new(
            shared(snapshot),
            verifier.clone(),
            None,
            AdmissionSettings::default(),
            None,
        );
        let attested =
            registryx_guard::server::webhook::router(WebhookState::new(Arc::new(admission)));
        let answer = runtime.block_on(validate(&attested, &digest_review));
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
        let requests = verifier.registry_requests();
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(validate(&attested, black_box(&digest_review))))
        });
        assert_eq!(
            verifier.registry_requests(),
            requests,
            "a cached review by digest must not reach the registry"
        );
    }
    group.finish();

    let mut parts = c.benchmark_group("admission parts");
    parts.bench_function("AdmissionReview from JSON", |b| {
        b.iter(|| {
            serde_json::from_str::<AdmissionReview<DynamicObject>>(black_box(&digest_review))
                .expect("a review")
        })
    });
    parts.bench_function("ImageRef::parse, one image by digest", |b| {
        b.iter(|| ImageRef::parse(black_box(&by_digest[0])).expect("a reference"))
    });
    parts.finish();
    drop(registry);
}

criterion_group!(benches, admission);
criterion_main!(benches);
