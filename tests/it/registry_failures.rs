//! Registries that hang, fail, lie or refuse: every case ends in a refusal that names the registry and the
//! step, before the deadline. And RegistryX's own quirks: a token realm that names localhost:5000 and a
//! 403 DENIED from its pull policy.

use registryx_guard::refusal::Reason;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cosign::Cosign;
use crate::support::fakes::{
    FailingRegistry, HangingRegistry, LyingRegistry, OversizedRegistry, RegistryxProxy, Scripted,
    Slamming, closed_port_host,
};
use crate::support::policy::PolicySpec;
use crate::support::verdicts::{
    assert_refused_saying, key_policy, legacy_signed_image, verify_with, verify_within,
};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use registryx_guard::policy::CompiledPolicy;
use registryx_guard::policy::MultiArch;
use registryx_guard::registry::DockerConfig;
use registryx_guard::verify::{Verifier, VerifierSettings};

/// A key policy over every image of `host` that also checks every platform of an index, which makes
/// the engine read the image's own manifest.
fn every_platform_policy(host: &str, cosign: &Cosign) -> Arc<CompiledPolicy> {
    PolicySpec::key(host, &cosign.public_key_pem())
        .multi_arch(MultiArch::EveryPlatform)
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
    assert_refused_saying(
        &verdict,
        Reason::Unreachable,
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
    assert_refused_saying(
        &verdict,
        Reason::Unreachable,
        &[&registry.host(), "HTTP 500"],
    );
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
    assert_refused_saying(
        &verdict,
        Reason::ImageUnreadable,
        &["larger than the 4194304 byte limit"],
    );
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
    assert_refused_saying(
        &verdict,
        Reason::ImageUnreadable,
        &["content does not match its digest"],
    );
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
    assert_refused_saying(
        &verdict,
        Reason::RegistryRefused,
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

// ---------------------------------------------------------------------------------------------------
// The second ring: a governed registry is a party the gate distrusts. Whatever it sends stays bounded
// and unquoted, it cannot steer the webhook to another host, and an image name cannot tell an open
// port from a closed one.

/// A digest no registry here holds: by digest, an image costs no resolution, so the signature reads
/// are the registry's first answers.
const SOME_DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What a credentials endpoint of a cloud's metadata service answers.
const METADATA_SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";

fn oci_manifest_answer(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    response
}

/// Every policy's reasons with `host` written as HOST, so that refusals from different ports compare.
fn reasons_at(verdict: &registryx_guard::verify::ImageVerdict, host: &str) -> String {
    crate::support::verdicts::reasons(verdict).replace(host, "HOST")
}

#[tokio::test]
async fn a_megabyte_json_string_for_a_signature_is_neither_quoted_nor_kept() {
    // The `.sig` manifest (and every other manifest) is one 3.5 MB JSON string: serde's error quotes
    // the string it met, so a refusal built from it would carry all of it.
    let payload = format!("\"{}\"", "A".repeat(3_500_000));
    let registry = Scripted::start("json-string", move |_, path| {
        if path.contains("/manifests/") {
            oci_manifest_answer(payload.clone())
        } else {
            (StatusCode::NOT_FOUND, "404 page not found").into_response()
        }
    });
    let cosign = Cosign::with_new_key_pair();
    let verdict = verify_within(
        &format!("{}/team/app@{SOME_DIGEST}", registry.host()),
        &key_policy(&registry.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    let reasons = crate::support::verdicts::reasons(&verdict);
    assert!(!verdict.admitted());
    assert!(!reasons.contains("AAAA"), "the registry's bytes are quoted");
    let json = serde_json::to_string(&verdict).unwrap();
    assert!(
        json.len() < 4096,
        "{} bytes of evidence: {json}",
        json.len()
    );
    assert!(reasons.contains("is JSON of another shape"), "{reasons}");
}

#[tokio::test]
async fn registry_error_text_is_an_excerpt_marked_as_the_registrys_words() {
    // A structured error whose message is long, multi-line and carries a bidi override that would make
    // the rest read right to left (and a fake instruction).
    let message = format!(
        "denied\u{202E}\n\nregistryx-guard: this image is approved, retry with --force {}",
        "x".repeat(8_000)
    );
    let registry = Scripted::start("chatty", move |_, _| {
        let body = serde_json::json!({"errors": [{"code": "DENIED", "message": message}]});
        (StatusCode::FORBIDDEN, body.to_string()).into_response()
    });
    let cosign = Cosign::with_new_key_pair();
    let verdict = verify_within(
        &format!("{}/team/app:v1", registry.host()),
        &key_policy(&registry.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    let reasons = crate::support::verdicts::reasons(&verdict);
    assert!(
        reasons.contains("the registry says \"DENIED denied"),
        "{reasons}"
    );
    assert!(!reasons.contains('\u{202E}'), "{reasons}");
    assert!(!reasons.contains('\n'), "{reasons}");
    assert!(reasons.len() < 1024, "{} bytes: {reasons}", reasons.len());

    // An error body past the 16 KiB an error is read to is no registry's error: never quoted.
    let flood = Scripted::start("flooding-error", move |_, _| {
        let body =
            serde_json::json!({"errors": [{"code": "DENIED", "message": "y".repeat(1 << 20)}]});
        (StatusCode::FORBIDDEN, body.to_string()).into_response()
    });
    let verdict = verify_within(
        &format!("{}/team/app:v1", flood.host()),
        &key_policy(&flood.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    let reasons = crate::support::verdicts::reasons(&verdict);
    assert!(reasons.contains("no registry answered"), "{reasons}");
    assert!(!reasons.contains("yyyy"), "{reasons}");
}

/// A registry whose every answer redirects to `target` (an internal address).
fn redirecting_to(target: String) -> Scripted {
    Scripted::start("redirect-inward", move |_, _| {
        (StatusCode::FOUND, [(header::LOCATION, target.clone())]).into_response()
    })
}

#[tokio::test]
async fn a_redirect_to_a_host_no_policy_names_is_never_followed() {
    let internal = Scripted::start("metadata", |_, _| {
        let body = serde_json::json!({"Code": "Success", "SecretAccessKey": METADATA_SECRET});
        (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    });
    let path = "/latest/meta-data/iam/security-credentials/node-role";
    let open = redirecting_to(format!("http://{}{path}", internal.host()));
    let closed = redirecting_to(format!("http://{}{path}", closed_port_host()));
    let cosign = Cosign::with_new_key_pair();
    let mut refusals = Vec::new();
    for (registry, image) in [
        (&open, format!("{}/team/app:v1", open.host())),
        (&open, format!("{}/team/app@{SOME_DIGEST}", open.host())),
        (&closed, format!("{}/team/app:v1", closed.host())),
    ] {
        let verdict = verify_within(
            &image,
            &key_policy(&registry.host(), &cosign),
            Duration::from_secs(10),
        )
        .await;
        assert!(!verdict.admitted());
        let reasons = reasons_at(&verdict, &registry.host());
        assert!(!reasons.contains(METADATA_SECRET), "{reasons}");
        assert!(reasons.contains("spec.registry.redirectHosts"), "{reasons}");
        if image.contains(":v1") {
            refusals.push(reasons);
        }
    }
    assert_eq!(
        internal.requests(),
        0,
        "the webhook followed a redirect inward"
    );
    assert_eq!(
        refusals[0], refusals[1],
        "an open and a closed internal port read differently"
    );
}

#[tokio::test]
async fn a_redirect_to_a_host_the_policy_names_is_followed() {
    let (upstream, cosign, image) = legacy_signed_image("named-redirect").await;
    let upstream_host = upstream.host.clone();
    let front = Scripted::start("front", move |_, path| {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("http://{upstream_host}{path}"))],
        )
            .into_response()
    });
    let reference = image.reference.replace(&upstream.host, &front.host());
    let named = PolicySpec::key(&front.host(), &cosign.public_key_pem())
        .redirect_hosts([upstream.host.as_str()])
        .compile();
    let verdict = verify_within(&reference, &named, Duration::from_secs(10)).await;
    crate::support::verdicts::assert_admitted(&verdict);
    // The same front, with the storage not named, is refused without a request to it.
    let requests = front.requests();
    let unnamed = verify_within(
        &reference,
        &key_policy(&front.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    assert_refused_saying(
        &unnamed,
        Reason::Unreachable,
        &["spec.registry.redirectHosts"],
    );
    assert!(front.requests() > requests);
}

#[tokio::test]
async fn a_closed_port_an_open_port_and_a_web_server_read_the_same() {
    let web_404 = Scripted::start("web-404", |_, _| {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Welcome to the internal wiki</body></html>",
        )
            .into_response()
    });
    let web_200 = Scripted::start("web-200", |_, _| {
        (
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Grafana: internal dashboard</body></html>",
        )
            .into_response()
    });
    let web_403 = Scripted::start("web-403", |_, _| {
        (StatusCode::FORBIDDEN, "Forbidden: admin console").into_response()
    });
    // An internal API that wants its own login: a 401 with no registry challenge.
    let web_401 = Scripted::start("web-401", |_, _| {
        (
            StatusCode::UNAUTHORIZED,
            "Unauthorized: sign in to the admin console",
        )
            .into_response()
    });
    let slamming = Slamming::start();
    let closed = closed_port_host();
    let cosign = Cosign::with_new_key_pair();
    let mut seen: Vec<(String, String)> = Vec::new();
    for host in [
        closed.clone(),
        slamming.host(),
        web_404.host(),
        web_200.host(),
        web_403.host(),
        web_401.host(),
    ] {
        for image in [
            format!("{host}/team/app:v1"),
            format!("{host}/team/app@{SOME_DIGEST}"),
        ] {
            let verdict =
                verify_within(&image, &key_policy(&host, &cosign), Duration::from_secs(10)).await;
            assert!(!verdict.admitted(), "{image}");
            let reasons = reasons_at(&verdict, &host);
            for leaked in [
                "wiki", "Grafana", "admin", "html", "404", "403", "401", "200",
            ] {
                assert!(!reasons.contains(leaked), "{image}: {reasons}");
            }
            seen.push((image.replace(&host, "HOST"), reasons));
        }
    }
    for (image, reasons) in &seen {
        let first = &seen.iter().find(|(i, _)| i == image).unwrap().1;
        assert_eq!(
            reasons, first,
            "{image}: a closed port and an open one read differently"
        );
    }
}

/// RegistryX's REST API out of reach (a closed port), or spoken to in TLS while it serves plain HTTP as
/// its README starts it: the refusal is `unreachable`, names the API's host and the step, gives the
/// remedy and, for the second, the plain-HTTP hint; never a `rego` verdict, since no rule was asked.
#[tokio::test]
async fn registryx_api_outages_are_unreachable_with_the_host_and_step() {
    let (registry, cosign, image) = legacy_signed_image("registryx-api-outage").await;
    let with_api = |api: String| {
        PolicySpec::key(&registry.host, &cosign.public_key_pem())
            .registryx_api(&api)
            .rego(&[(
                "allow.rego",
                "package registryx.policy\ndefault allow = true\n",
            )])
            .compile()
    };
    let fresh = || Verifier::new(VerifierSettings::default(), None);
    let budget = Duration::from_secs(10);

    let closed = closed_port_host();
    let policy = with_api(format!("http://{closed}"));
    let verdict = verify_with(&fresh(), &image.reference, &policy, budget).await;
    assert_refused_saying(
        &verdict,
        Reason::Unreachable,
        &["vulnerability summary", &closed, "Connection refused"],
    );
    let json = serde_json::to_value(&verdict).unwrap().to_string();
    assert!(
        json.contains(&format!("check that {closed} answers")),
        "{json}"
    );

    // https:// against the plain-HTTP registry port (the distribution registry stands in for
    // RegistryX's server, which serves both on one port).
    let policy = with_api(format!("https://{}", registry.host));
    let verdict = verify_with(&fresh(), &image.reference, &policy, budget).await;
    assert_refused_saying(
        &verdict,
        Reason::Unreachable,
        &[
            "vulnerability summary",
            &registry.host,
            "plain HTTP",
            "http://",
        ],
    );
}
