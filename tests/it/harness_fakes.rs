//! Smoke tests of the fakes and the test CA: each one behaves as later tests assume, checked with plain
//! HTTP, real registries and real cosign.

use std::time::{Duration, Instant};

use crate::support::cosign::{Format, assert_success};
use crate::support::fakes::{
    FailingRegistry, HangingRegistry, LyingRegistry, OVERSIZED_DIGEST, OversizedRegistry,
    RegistryxProxy, RequestCounts,
};
use crate::support::keyless::{
    Leaf, OID_EMBEDDED_SCTS, OID_ISSUER_V1, OID_ISSUER_V2, Sct, TestCa, TestCtLog,
};
use crate::support::registry::{OCI_INDEX, OCI_MANIFEST, PushedImage, Registry, sha256};
use crate::support::verdicts::{base64_decode, get_blob, signature_manifest};
use serde_json::{Value, json};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const CHALLENGE: &str = r#"Bearer realm="http://localhost:5000/auth/token",service="registryx""#;
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const IDENTITY: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main";

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

#[track_caller]
fn assert_header(response: &reqwest::Response, name: &str, expected: &str) {
    assert_eq!(
        header(response, name).as_deref(),
        Some(expected),
        "{name} of {}",
        response.url()
    );
}

/// Sends `method` to `url` accepting OCI manifests and indexes, with a bearer token when given.
async fn send(method: reqwest::Method, url: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method.clone(), url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

async fn get(url: &str, bearer: Option<&str>) -> reqwest::Response {
    send(reqwest::Method::GET, url, bearer).await
}

async fn head(url: &str) -> reqwest::Response {
    send(reqwest::Method::HEAD, url, None).await
}

/// Asks the proxy for a token the way a registry client would after the challenge.
async fn token(proxy: &RegistryxProxy, repository: &str) -> String {
    let response = get(
        &proxy.url(&format!(
            "/auth/token?service=registryx&scope=repository:{repository}:pull"
        )),
        None,
    )
    .await;
    assert_eq!(response.status(), 200, "anonymous token refused");
    let body: Value = response.json().await.expect("token json");
    assert_eq!(body["token"], body["access_token"], "{body}");
    assert_eq!(body["expires_in"], 3600, "{body}");
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    assert!(
        time::OffsetDateTime::parse(issued_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "issued_at {issued_at:?} is not RFC 3339"
    );
    body["token"].as_str().expect("token string").to_owned()
}

#[tokio::test]
async fn registryx_proxy_serves_manifests_anonymously_and_blobs_only_with_a_token() {
    let registry = Registry::distribution();
    let image = registry.push_image("team/app", "v1", "registryx").await;
    let proxy = RegistryxProxy::start(&registry.host).await;
    assert_ne!(proxy.host(), "localhost:5000");

    let manifest = get(&proxy.url("/v2/team/app/manifests/v1"), None).await;
    assert_eq!(manifest.status(), 200);
    assert_header(&manifest, "docker-content-digest", &image.digest);
    assert_header(&manifest, "content-type", OCI_MANIFEST);
    let body = manifest.bytes().await.expect("manifest body");
    assert_eq!(sha256(&body), image.digest);

    let head = head(&proxy.url(&format!("/v2/team/app/manifests/{}", image.digest))).await;
    assert_eq!(head.status(), 200);
    assert_header(&head, "docker-content-digest", &image.digest);
    assert_header(&head, "content-length", &body.len().to_string());

    let manifest: Value = serde_json::from_slice(&body).expect("manifest json");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
    let blob_url = proxy.url(&format!("/v2/team/app/blobs/{layer}"));
    let refused = get(&blob_url, None).await;
    assert_eq!(refused.status(), 401);
    assert_header(&refused, "www-authenticate", CHALLENGE);
    let ping = get(&proxy.url("/v2/"), None).await;
    assert_eq!(ping.status(), 401);
    assert_header(&ping, "www-authenticate", CHALLENGE);
    let tags = get(&proxy.url("/v2/team/app/tags/list"), None).await;
    assert_eq!(tags.status(), 401);

    let token = token(&proxy, "team/app").await;
    assert_eq!(get(&proxy.url("/v2/"), Some(&token)).await.status(), 200);
    let forged = get(&blob_url, Some("not-a-token")).await;
    assert_eq!(forged.status(), 401, "a made-up token was accepted");
    let blob = get(&blob_url, Some(&token)).await;
    assert_eq!(blob.status(), 200);
    assert_eq!(sha256(&blob.bytes().await.expect("blob body")), layer);
    let tags: Value = get(&proxy.url("/v2/team/app/tags/list"), Some(&token))
        .await
        .json()
        .await
        .expect("tags json");
    assert_eq!(tags["tags"], json!(["v1"]));

    assert_eq!(
        proxy.requests(),
        RequestCounts {
            manifest: 2,
            blob: 3,
            token: 1,
            referrers: 0,
            other: 4,
        }
    );
    assert_eq!(proxy.token_scopes(), ["repository:team/app:pull"]);
}

#[tokio::test]
async fn registryx_proxy_denies_by_policy_and_finds_library_aliases() {
    let registry = Registry::distribution();
    let nginx = registry.push_image("library/nginx", "1.27", "nginx").await;
    let busybox = registry.push_image("busybox", "1.37", "busybox").await;
    registry.push_image("blocked/app", "v1", "blocked").await;
    let proxy = RegistryxProxy::start(&registry.host).await;
    proxy.deny("blocked/app", "critical CVE-2024-0001");

    for (path, digest) in [
        ("/v2/nginx/manifests/1.27", &nginx.digest),
        ("/v2/library/nginx/manifests/1.27", &nginx.digest),
        ("/v2/library/busybox/manifests/1.37", &busybox.digest),
    ] {
        let response = get(&proxy.url(path), None).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_header(&response, "docker-content-digest", digest);
    }

    let denied = get(&proxy.url("/v2/blocked/app/manifests/v1"), None).await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.expect("denial json");
    assert_eq!(
        body,
        json!({"errors": [{"code": "DENIED", "message": "policy violation: critical CVE-2024-0001"}]})
    );
    let missing = get(&proxy.url("/v2/nobody/manifests/v1"), None).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn registryx_proxy_with_credentials_demands_basic_auth_for_tokens() {
    let registry = Registry::distribution();
    let proxy = RegistryxProxy::start(&registry.host)
        .await
        .with_credentials("robot", "s3cret");
    let url = proxy.url("/auth/token?service=registryx&scope=repository:team/app:pull");
    let request_token = |password: Option<&str>| {
        let mut request = reqwest::Client::new().get(&url);
        if let Some(password) = password {
            request = request.basic_auth("robot", Some(password));
        }
        async move { request.send().await.expect("token request") }
    };

    assert_eq!(request_token(None).await.status(), 401);
    assert_eq!(request_token(Some("guess")).await.status(), 401);
    let right = request_token(Some("s3cret")).await;
    assert_eq!(right.status(), 200);
    let body: Value = right.json().await.expect("token json");
    let token = body["token"].as_str().expect("token");
    assert_eq!(get(&proxy.url("/v2/"), Some(token)).await.status(), 200);
    assert_eq!(proxy.requests().token, 3);
}

#[tokio::test]
async fn hanging_registry_never_answers() {
    let registry = HangingRegistry::start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let started = Instant::now();
    let error = client
        .get(format!("http://{}/v2/", registry.host()))
        .send()
        .await
        .expect_err("the hanging registry answered");
    assert!(error.is_timeout(), "not a timeout: {error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(registry.connections(), 1);
}

#[tokio::test]
async fn failing_registry_answers_every_request_with_its_status() {
    let registry = FailingRegistry::start(500).await;
    for path in ["/v2/", "/v2/team/app/manifests/v1"] {
        let response = get(&format!("http://{}{path}", registry.host()), None).await;
        assert_eq!(response.status(), 500, "{path}");
        let body: Value = response.json().await.expect("error json");
        assert_eq!(body["errors"][0]["code"], "UNKNOWN");
    }
    assert_eq!(registry.requests(), 2);
    let unavailable = FailingRegistry::start(503).await;
    let response = get(&format!("http://{}/v2/", unavailable.host()), None).await;
    assert_eq!(response.status(), 503);

    // Dropping a fake stops it: its port refuses connections again.
    let url = format!("http://{}/v2/", registry.host());
    drop(registry);
    let error = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect_err("a dropped fake still answers");
    assert!(error.is_connect(), "not a refused connection: {error}");
}

/// Reads a whole body chunk by chunk: (bytes, first 32 bytes, last 2 bytes).
async fn drain(mut response: reqwest::Response) -> (u64, Vec<u8>, Vec<u8>) {
    let (mut total, mut head, mut tail) = (0u64, Vec::new(), Vec::new());
    while let Some(chunk) = response.chunk().await.expect("body chunk") {
        if head.len() < 32 {
            head.extend(chunk.iter().take(32 - head.len()));
        }
        total += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(2);
        tail.drain(..keep);
    }
    (total, head, tail)
}

#[tokio::test]
async fn oversized_registry_streams_the_declared_size() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let registry = OversizedRegistry::start(SIZE).await;
    let url = format!("http://{}/v2/big/app/manifests/v1", registry.host());

    let ping = get(&format!("http://{}/v2/", registry.host()), None).await;
    assert_eq!(ping.status(), 200);
    let head = head(&url).await;
    assert_eq!(head.status(), 200);
    assert_header(&head, "docker-content-digest", OVERSIZED_DIGEST);
    assert_header(&head, "content-type", OCI_MANIFEST);
    assert_header(&head, "content-length", &SIZE.to_string());

    let response = get(&url, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(SIZE));
    let (total, head, tail) = drain(response).await;
    assert_eq!(total, SIZE);
    assert!(
        head.starts_with(br#"{"schemaVersion":2,"#),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(tail, br#""}"#);
    assert_eq!(registry.bytes_sent(), SIZE);

    let chunked = OversizedRegistry::start_chunked(1024 * 1024).await;
    let response = get(
        &format!("http://{}/v2/big/app/manifests/v1", chunked.host()),
        None,
    )
    .await;
    assert_eq!(response.content_length(), None, "a length was declared");
    assert_eq!(drain(response).await.0, 1024 * 1024);
}

#[tokio::test]
async fn lying_registry_claims_another_digest_than_it_serves() {
    let registry = LyingRegistry::start().await;
    assert_ne!(registry.claimed_digest(), registry.actual_digest());
    let response = get(
        &format!(
            "http://{}/v2/team/app/manifests/{}",
            registry.host(),
            registry.claimed_digest()
        ),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_header(
        &response,
        "docker-content-digest",
        &registry.claimed_digest(),
    );
    let body = response.bytes().await.expect("body");
    assert_eq!(sha256(&body), registry.actual_digest());
    let manifest: Value = serde_json::from_slice(&body).expect("a well-formed manifest");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
}

// ---------------------------------------------------------------------------------------------------
// The test CA

fn der_of(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64_decode(&body)
}

/// All certificates of a PEM bundle, as DER.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    pem.split("-----END CERTIFICATE-----")
        .filter(|part| part.contains("-----BEGIN CERTIFICATE-----"))
        .map(der_of)
        .collect()
}

fn squeeze(text: &str) -> String {
    text.split_whitespace().collect()
}

/// A leaf issued with an SCT carries, as its last extension, an RFC 6962 SCT list that x509-parser
/// reads: one v1 SCT naming the test log, SHA-256 with ECDSA. A leaf issued without has none.
#[test]
fn test_ca_embeds_an_sct_of_its_ct_log() {
    let (ca, log) = (TestCa::with_intermediate("ct"), TestCtLog::new());
    let leaf = ca.issue_with(ISSUER, IDENTITY, Sct::By(&log));
    let der = der_of(leaf.cert_pem());
    let (_, cert) = X509Certificate::from_der(&der).expect("parse the leaf");
    let last = cert.extensions().last().expect("extensions");
    let oid: Vec<u64> = last.oid.iter().expect("small OID").collect();
    assert_eq!(oid, OID_EMBEDDED_SCTS);
    let ParsedExtension::SCT(scts) = last.parsed_extension() else {
        panic!("not an SCT list: {:?}", last.parsed_extension());
    };
    assert_eq!(scts.len(), 1);
    assert_eq!(scts[0].id.key_id, &log.log_id());
    assert_eq!(
        (scts[0].signature.hash_alg_id, scts[0].signature.sign_alg_id),
        (4, 3)
    );

    let plain = ca.issue(ISSUER, IDENTITY);
    let der = der_of(plain.cert_pem());
    let (_, cert) = X509Certificate::from_der(&der).expect("parse the leaf");
    assert!(
        cert.extensions()
            .iter()
            .all(|e| !matches!(e.parsed_extension(), ParsedExtension::SCT(_)))
    );
}

#[test]
fn test_ca_issues_fulcio_style_leaves() {
    let ca = TestCa::new("fulcio-style");
    let leaf = ca.issue(ISSUER, IDENTITY);
    let der = der_of(leaf.cert_pem());
    let (_, cert) = X509Certificate::from_der(&der).expect("parse the leaf");
    let root_der = der_of(&ca.root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).expect("parse the root");

    assert_eq!(cert.issuer(), root.subject());
    assert!(root.is_ca() && !cert.is_ca());
    assert_eq!(
        cert.subject().iter().count(),
        0,
        "Fulcio leaves have no subject"
    );
    let now = time::OffsetDateTime::now_utc();
    let validity = cert.validity();
    assert!(validity.not_before.to_datetime() < now && now < validity.not_after.to_datetime());
    assert!(root.validity().not_before <= validity.not_before);

    let mut seen = (false, false, false, false, false);
    for extension in cert.extensions() {
        let oid: Vec<u64> = extension.oid.iter().expect("small OID").collect();
        if oid == OID_ISSUER_V1 {
            assert_eq!(
                extension.value,
                ISSUER.as_bytes(),
                "1.1 holds the raw issuer"
            );
            seen.0 = true;
        } else if oid == OID_ISSUER_V2 {
            assert_eq!(extension.value[0], 0x0c, "1.8 holds a UTF8String");
            assert_eq!(usize::from(extension.value[1]), ISSUER.len());
            assert_eq!(&extension.value[2..], ISSUER.as_bytes());
            seen.1 = true;
        }
        match extension.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => seen.2 = eku.code_signing,
            ParsedExtension::KeyUsage(usage) => seen.3 = usage.digital_signature(),
            ParsedExtension::SubjectAlternativeName(san) => {
                seen.4 = san.general_names == [GeneralName::URI(IDENTITY)];
                assert!(extension.critical, "a SAN without subject must be critical");
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        (true, true, true, true, true),
        "issuer v1, issuer v2, code-signing EKU, digitalSignature, URI SAN"
    );

    let mail = ca.issue("https://accounts.google.com", "dev@example.com");
    let der = der_of(mail.cert_pem());
    let (_, cert) = X509Certificate::from_der(&der).expect("parse the email leaf");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN");
    assert_eq!(
        san.value.general_names,
        [GeneralName::RFC822Name("dev@example.com")]
    );
    assert!(leaf.private_key().exists() && leaf.public_key().exists());
    assert_eq!(pem_certificates(leaf.chain_pem()), [root_der]);
}

/// The annotations of the one layer of `image`'s legacy `sha256-<hex>.sig` manifest, after checking that
/// they carry `leaf`'s certificate.
async fn legacy_signature_annotations(
    registry: &Registry,
    image: &PushedImage,
    leaf: &Leaf,
) -> Value {
    let manifest = signature_manifest(registry, image).await;
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one signature expected: {manifest}");
    let annotations = &layers[0]["annotations"];
    let certificate = annotations["dev.sigstore.cosign/certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate annotation: {manifest}"));
    assert_eq!(squeeze(certificate), squeeze(leaf.cert_pem()));
    annotations.clone()
}

fn assert_verifies_only_its_identity(leaf: &Leaf, image: &str, format: Format) {
    assert_success(
        "cosign verify with the test CA",
        &leaf.verify(image, format, IDENTITY, ISSUER),
    );
    let wrong_identity = leaf.verify(image, format, "https://github.com/evil/app", ISSUER);
    assert!(
        !wrong_identity.status.success(),
        "cosign accepted another identity"
    );
    let wrong_issuer = leaf.verify(image, format, IDENTITY, "https://accounts.google.com");
    assert!(
        !wrong_issuer.status.success(),
        "cosign accepted another issuer"
    );
}

#[tokio::test]
async fn a_leaf_signs_in_the_legacy_format_with_its_certificate() {
    let registry = Registry::distribution();
    let image = registry
        .push_image("keyless/app", "v1", "keyless-legacy")
        .await;
    let ca = TestCa::new("legacy");
    let leaf = ca.issue(ISSUER, IDENTITY);

    leaf.sign(&image.reference, Format::Legacy);

    let annotations = legacy_signature_annotations(&registry, &image, &leaf).await;
    // cosign drops self-signed certificates from the chain it attaches: with no intermediate there is
    // nothing left: the annotation is present and empty, and the root never travels with the signature.
    assert_eq!(
        annotations["dev.sigstore.cosign/chain"], "",
        "the chain annotation is there but empty"
    );
    assert!(annotations["dev.cosignproject.cosign/signature"].is_string());
    assert!(annotations.get("dev.sigstore.cosign/bundle").is_none());
    assert_verifies_only_its_identity(&leaf, &image.reference, Format::Legacy);
}

#[tokio::test]
async fn a_leaf_under_an_intermediate_attaches_the_intermediate_only() {
    let registry = Registry::distribution();
    let image = registry
        .push_image("keyless/chained", "v1", "keyless-chain")
        .await;
    let ca = TestCa::with_intermediate("chained");
    let leaf = ca.issue(ISSUER, IDENTITY);
    assert_eq!(pem_certificates(leaf.chain_pem()).len(), 2);

    leaf.sign(&image.reference, Format::Legacy);

    let annotations = legacy_signature_annotations(&registry, &image, &leaf).await;
    let chain = annotations["dev.sigstore.cosign/chain"]
        .as_str()
        .unwrap_or_else(|| panic!("no chain annotation: {annotations}"));
    let intermediate = ca.intermediate_pem().expect("an intermediate");
    assert_eq!(pem_certificates(chain), pem_certificates(&intermediate));
    assert_verifies_only_its_identity(&leaf, &image.reference, Format::Legacy);
}

/// The sigstore bundles attached to `digest` as OCI referrers.
async fn referrer_bundles(registry: &Registry, repository: &str, digest: &str) -> Vec<Value> {
    let referrers: Value =
        reqwest::get(registry.url(&format!("/v2/{repository}/referrers/{digest}")))
            .await
            .expect("referrers")
            .json()
            .await
            .expect("referrers json");
    let mut bundles = Vec::new();
    for descriptor in referrers["manifests"].as_array().expect("manifests") {
        let referrer = descriptor["digest"].as_str().expect("digest");
        let (status, _, _, body) = registry.get_manifest(repository, referrer).await;
        assert_eq!(status, 200);
        let manifest: Value = serde_json::from_slice(&body).expect("referrer manifest");
        let artifact_type = manifest["artifactType"].as_str().unwrap_or_default();
        if !artifact_type.starts_with("application/vnd.dev.sigstore.bundle") {
            continue;
        }
        let layer = manifest["layers"][0]["digest"]
            .as_str()
            .expect("bundle layer");
        let blob = get_blob(registry, repository, layer).await;
        bundles.push(serde_json::from_slice(&blob).expect("bundle json"));
    }
    bundles
}

/// The DER certificates of a bundle's `verificationMaterial.x509CertificateChain`.
fn bundle_chain(bundle: &Value) -> Vec<Vec<u8>> {
    let material = &bundle["verificationMaterial"];
    assert!(material.get("certificate").is_none(), "{material}");
    assert!(material.get("publicKey").is_none(), "{material}");
    assert!(
        material["tlogEntries"]
            .as_array()
            .is_none_or(|entries| entries.is_empty()),
        "a transparency log entry without a log: {material}"
    );
    material["x509CertificateChain"]["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no x509CertificateChain: {material}"))
        .iter()
        .map(|c| base64_decode(c["rawBytes"].as_str().expect("rawBytes")))
        .collect()
}

#[tokio::test]
async fn a_leaf_signs_a_bundle_whose_verification_material_is_its_chain_without_the_root() {
    let registry = Registry::with_referrers();
    let image = registry
        .push_image("keyless/bundle", "v1", "keyless-bundle")
        .await;
    let chained = registry
        .push_image("keyless/bundle", "v2", "keyless-bundle-chained")
        .await;
    let ca = TestCa::new("bundle");
    let leaf = ca.issue(ISSUER, IDENTITY);
    let chained_ca = TestCa::with_intermediate("bundle-chained");
    let chained_leaf = chained_ca.issue(ISSUER, IDENTITY);

    leaf.sign(&image.reference, Format::Bundle);
    chained_leaf.sign(&chained.reference, Format::Bundle);

    // With --certificate-chain cosign writes an x509CertificateChain (not a single `certificate`) and
    // strips the self-signed root from it: the leaf alone, or the leaf and the intermediate.
    let bundles = referrer_bundles(&registry, "keyless/bundle", &image.digest).await;
    assert_eq!(bundles.len(), 1, "one bundle expected");
    assert_eq!(
        bundles[0]["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    assert_eq!(
        bundles[0]["dsseEnvelope"]["payloadType"],
        "application/vnd.in-toto+json"
    );
    assert_eq!(bundle_chain(&bundles[0]), [der_of(leaf.cert_pem())]);
    let bundles = referrer_bundles(&registry, "keyless/bundle", &chained.digest).await;
    assert_eq!(bundles.len(), 1, "one bundle expected");
    let intermediate = ca_intermediate_der(&chained_ca);
    assert_eq!(
        bundle_chain(&bundles[0]),
        [der_of(chained_leaf.cert_pem()), intermediate]
    );

    assert_verifies_only_its_identity(&leaf, &image.reference, Format::Bundle);
    assert_verifies_only_its_identity(&chained_leaf, &chained.reference, Format::Bundle);
}

fn ca_intermediate_der(ca: &TestCa) -> Vec<u8> {
    der_of(&ca.intermediate_pem().expect("an intermediate"))
}
