//! Smoke tests of the test harness: each real tool starts and does the one thing later tests rely on.

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::registry::{OCI_MANIFEST, Registry};

#[tokio::test]
async fn distribution_registry_stores_and_serves_a_pushed_image() {
    let registry = Registry::distribution();
    let image = registry.push_image("smoke/app", "v1", "distribution").await;

    let (status, digest, content_type, body) = registry.get_manifest("smoke/app", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(
        digest.as_deref(),
        Some(image.digest.as_str()),
        "the registry computed another digest"
    );
    assert_eq!(content_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(crate::support::registry::sha256(&body), image.digest);

    let (status, ..) = registry.get_manifest("smoke/app", "missing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn referrers_registry_answers_the_referrers_api() {
    let registry = Registry::with_referrers();
    let image = registry.push_image("smoke/app", "v1", "referrers").await;
    let response = reqwest::get(registry.url(&format!("/v2/smoke/app/referrers/{}", image.digest)))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let index: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn cosign_signs_in_the_legacy_format_and_verifies_with_the_public_key() {
    let registry = Registry::distribution();
    let image = registry.push_image("smoke/signed", "v1", "legacy").await;
    let unsigned = registry
        .push_image("smoke/unsigned", "v1", "unsigned")
        .await;
    let cosign = Cosign::with_new_key_pair();

    cosign.sign(&image.reference, Format::Legacy);

    let signature_tag = format!("{}.sig", image.digest.replace(':', "-"));
    assert!(
        registry.tags("smoke/signed").await.contains(&signature_tag),
        "cosign did not push {signature_tag}"
    );
    assert_success(
        "cosign verify",
        &cosign.verify(&image.reference, Format::Legacy),
    );
    let refused = cosign.verify(&unsigned.reference, Format::Legacy);
    assert!(
        !refused.status.success(),
        "cosign verify accepted an unsigned image"
    );
}

#[tokio::test]
async fn cosign_attaches_a_bundle_as_a_referrer_and_verifies_it() {
    let registry = Registry::with_referrers();
    let image = registry.push_image("smoke/bundle", "v1", "bundle").await;
    let cosign = Cosign::with_new_key_pair();

    cosign.sign(&image.reference, Format::Bundle);

    let referrers: serde_json::Value =
        reqwest::get(registry.url(&format!("/v2/smoke/bundle/referrers/{}", image.digest)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    // go-containerregistry lists a referrer under its config media type, not its artifactType, so the
    // referrer manifests themselves are read to find the bundle.
    let mut bundles = 0;
    for descriptor in referrers["manifests"].as_array().unwrap() {
        let digest = descriptor["digest"].as_str().unwrap();
        let (status, _, _, body) = registry.get_manifest("smoke/bundle", digest).await;
        assert_eq!(status, 200);
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            manifest["subject"]["digest"],
            image.digest.as_str(),
            "referrer of another digest"
        );
        let artifact_type = manifest["artifactType"].as_str().unwrap_or_default();
        bundles += usize::from(artifact_type.starts_with("application/vnd.dev.sigstore.bundle"));
    }
    assert_eq!(
        bundles, 1,
        "expected one sigstore bundle among the referrers: {referrers}"
    );
    assert_success(
        "cosign verify",
        &cosign.verify(&image.reference, Format::Bundle),
    );
    let other = Cosign::with_new_key_pair();
    assert!(
        !other
            .verify(&image.reference, Format::Bundle)
            .status
            .success(),
        "another key verified the bundle"
    );
}

#[test]
fn control_plane_answers_readyz_and_stores_objects() {
    let cluster = ControlPlane::start();
    let ready = cluster.kubectl(&["get", "--raw", "/readyz"]);
    assert_success("kubectl get --raw /readyz", &ready);
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ok");

    let created = cluster.kubectl(&["create", "namespace", "smoke"]);
    assert_success("kubectl create namespace", &created);
    let got = cluster.kubectl(&[
        "get",
        "namespace",
        "smoke",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_success("kubectl get namespace", &got);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "Active");
}
