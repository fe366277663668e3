//! Attestations as evidence (issue 20): real `cosign attest` output, legacy `.att` tags on a registry
//! and bundles among the referrers, required by a key authority. The attacker's cases first: what
//! must never count.

use serde_json::{Value, json};

use crate::support::cosign::{Cosign, Format, command_in};
use crate::support::keyless::TestCa;
use crate::support::policy::PolicySpec;
use crate::support::registry::{PushedImage, Registry};
use crate::support::verdicts::{assert_admitted, assert_refused, assert_refused_saying, verify};
use registryx_guard::refusal::Reason;
use registryx_guard::verify::ImageVerdict;

const SLSA1: &str = "https://slsa.dev/provenance/v1";

fn provenance(builder: &str) -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"repository": "https://github.com/acme/app"}},
        },
        "runDetails": {"builder": {"id": builder}},
    })
}

const BUILDER: &str = "https://github.com/acme/.github/workflows/release.yml@refs/heads/main";

/// A registry of `format`'s kind (referrers for bundles), an image signed by `cosign` in it.
async fn signed_image(format: Format, seed: &str) -> (Registry, Cosign, PushedImage) {
    let registry = match format {
        Format::Bundle => Registry::with_referrers(),
        Format::Legacy => Registry::distribution(),
    };
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", seed).await;
    cosign.sign(&image.reference, format);
    (registry, cosign, image)
}

fn requiring(registry: &Registry, cosign: &Cosign, types: &[&str]) -> PolicySpec {
    PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .requiring_attestations(types.iter().copied())
}

/// Verifies `image` under the key policy of `cosign` whose authority requires `kind`.
async fn verify_requiring(
    registry: &Registry,
    cosign: &Cosign,
    image: &PushedImage,
    kind: &str,
) -> ImageVerdict {
    verify(
        &image.reference,
        &requiring(registry, cosign, &[kind]).compile(),
    )
    .await
}

/// The evidence JSON of the first attestation the first authority of the first policy found.
fn first_attestation(verdict: &ImageVerdict) -> Value {
    let json = serde_json::to_value(&verdict.policies[0]).unwrap();
    json["authorities"][0]["attestations"][0].clone()
}

const BUILDER_RULE: &str = "package registry\nimport rego.v1\n\n\
    deny contains msg if {\n\
      some p in input.attestations[\"https://slsa.dev/provenance/v1\"]\n\
      not startswith(p.predicate.runDetails.builder.id, \"https://github.com/acme/\")\n\
      msg := sprintf(\"untrusted builder %v\", [p.predicate.runDetails.builder.id])\n\
    }\n\
    deny contains \"no provenance\" if not input.attestations[\"https://slsa.dev/provenance/v1\"]\n";

#[tokio::test]
async fn a_signature_alone_never_satisfies_an_attestation_requirement() {
    for format in [Format::Legacy, Format::Bundle] {
        let (registry, cosign, image) = signed_image(format, &format!("sig-only-{format:?}")).await;
        let verdict = verify_requiring(&registry, &cosign, &image, "slsaprovenance1").await;
        assert_refused_saying(
            &verdict,
            Reason::AttestationMissing,
            &["no attestation of type \"https://slsa.dev/provenance/v1\""],
        );
        let remedy = verdict.policies[0].failure.as_ref().unwrap().remedy.clone();
        assert!(
            remedy.as_deref().is_some_and(|r| r.contains(
                "cosign attest --key <the private key of authority release> --type https://slsa.dev/provenance/v1"
            ) && r.contains(&image.digest)),
            "{remedy:?}"
        );
    }
}

#[tokio::test]
async fn an_attestation_signed_by_another_key_does_not_count() {
    for format in [Format::Legacy, Format::Bundle] {
        let (registry, cosign, image) =
            signed_image(format, &format!("other-key-{format:?}")).await;
        let intruder = Cosign::with_new_key_pair();
        intruder.attest(
            &image.reference,
            "slsaprovenance1",
            &provenance(BUILDER),
            format,
        );

        let verdict = verify_requiring(&registry, &cosign, &image, "slsaprovenance1").await;
        assert_refused(&verdict, Reason::AttestationOtherSigner);
        let found = first_attestation(&verdict);
        assert_eq!(found["predicateType"], SLSA1, "{found:#}");
        assert_eq!(found["verified"], false, "{found:#}");
        assert_eq!(found["reasonKind"], "attestation_other_signer", "{found:#}");
    }
}

#[tokio::test]
async fn an_attestation_of_another_type_does_not_count() {
    for format in [Format::Legacy, Format::Bundle] {
        let (registry, cosign, image) =
            signed_image(format, &format!("other-type-{format:?}")).await;
        cosign.attest(
            &image.reference,
            "slsaprovenance02",
            &json!({"builder": {"id": BUILDER}, "buildType": "x"}),
            format,
        );

        let verdict = verify_requiring(&registry, &cosign, &image, "slsaprovenance1").await;
        assert_refused_saying(
            &verdict,
            Reason::AttestationOtherType,
            &["https://slsa.dev/provenance/v0.2"],
        );
    }
}

#[tokio::test]
async fn an_unsigned_sbom_attached_never_admits() {
    let (registry, cosign, image) = signed_image(Format::Legacy, "attached-sbom").await;
    let dir = tempfile::tempdir().unwrap();
    let sbom = dir.path().join("sbom.json");
    std::fs::write(
        &sbom,
        r#"{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"app","packages":[]}"#,
    )
    .unwrap();
    let output = command_in(dir.path())
        .args(["attach", "sbom", "--type", "spdx", "--sbom"])
        .arg(&sbom)
        .arg(&image.reference)
        .output()
        .unwrap();
    crate::support::cosign::assert_success("cosign attach sbom", &output);

    let verdict = verify_requiring(&registry, &cosign, &image, "spdxjson").await;
    assert_refused(&verdict, Reason::AttestationMissing);
}

#[tokio::test]
async fn a_required_provenance_admits_and_reaches_rego() {
    for format in [Format::Legacy, Format::Bundle] {
        let (registry, cosign, image) = signed_image(format, &format!("attested-{format:?}")).await;
        cosign.attest(
            &image.reference,
            "slsaprovenance1",
            &provenance(BUILDER),
            format,
        );

        let policy = requiring(&registry, &cosign, &["slsaprovenance1"])
            .rego(&[("builder.rego", BUILDER_RULE)])
            .compile();
        let verdict = verify(&image.reference, &policy).await;
        assert_admitted(&verdict);
        let found = first_attestation(&verdict);
        assert_eq!(found["counted"], true, "{format:?} {found:#}");
        assert_eq!(
            found["format"],
            if format == Format::Bundle {
                "bundle"
            } else {
                "legacy"
            }
        );
        // The module denies "no provenance" unless input.attestations carries it: admitted says it
        // reached Rego.
    }
}

#[tokio::test]
async fn rego_denies_a_provenance_from_another_builder() {
    let (registry, cosign, image) = signed_image(Format::Bundle, "rego-builder").await;
    cosign.attest(
        &image.reference,
        "slsaprovenance1",
        &provenance("https://evil.example/builder"),
        Format::Bundle,
    );
    let policy = requiring(&registry, &cosign, &["slsaprovenance1"])
        .rego(&[("builder.rego", BUILDER_RULE)])
        .compile();
    let verdict = verify(&image.reference, &policy).await;
    assert_refused_saying(
        &verdict,
        Reason::Rego,
        &["untrusted builder https://evil.example/builder"],
    );
}

#[tokio::test]
async fn without_a_requirement_nothing_changes_and_no_att_tag_is_read() {
    let (registry, cosign, image) = signed_image(Format::Legacy, "no-requirement").await;
    let verifier = crate::support::verdicts::new_verifier();
    let verdict = crate::support::verdicts::verify_with(
        &verifier,
        &image.by_digest(),
        &PolicySpec::key(&registry.host, &cosign.public_key_pem()).compile(),
        crate::support::verdicts::BUDGET,
    )
    .await;
    assert_admitted(&verdict);
    // As before attestations existed: referrers, .sig manifest, fallback tag, one payload.
    assert_eq!(verifier.registry_requests(), 4);
}

/// Required, a legacy attestation costs two requests more: the `.att` manifest (read beside the `.sig`
/// one) and its envelope (beside the payload).
#[tokio::test]
async fn a_required_legacy_attestation_is_read_in_the_same_pass() {
    let (registry, cosign, image) = signed_image(Format::Legacy, "same-pass").await;
    cosign.attest(
        &image.reference,
        "slsaprovenance1",
        &provenance(BUILDER),
        Format::Legacy,
    );
    let verifier = crate::support::verdicts::new_verifier();
    let verdict = crate::support::verdicts::verify_with(
        &verifier,
        &image.by_digest(),
        &requiring(&registry, &cosign, &["slsaprovenance1"]).compile(),
        crate::support::verdicts::BUDGET,
    )
    .await;
    assert_admitted(&verdict);
    assert_eq!(verifier.registry_requests(), 6);
}

/// An attestation the authority made for one image, copied to another image's `.att` tag: signed by
/// the right key, but its subject names the first digest.
#[tokio::test]
async fn an_attestation_copied_from_another_digest_does_not_count() {
    let (registry, cosign, first) = signed_image(Format::Legacy, "copied-from").await;
    cosign.attest(
        &first.reference,
        "slsaprovenance1",
        &provenance(BUILDER),
        Format::Legacy,
    );
    let second = registry.push_image("team/app", "v2", "copied-to").await;
    cosign.sign(&second.reference, Format::Legacy);
    let att = |digest: &str| format!("{}.att", digest.replace(':', "-"));
    let (status, _, media_type, bytes) =
        registry.get_manifest("team/app", &att(&first.digest)).await;
    assert_eq!(status, 200);
    registry
        .push_manifest(
            "team/app",
            &att(&second.digest),
            media_type.as_deref().unwrap(),
            &bytes,
        )
        .await;

    let verdict = verify_requiring(&registry, &cosign, &second, "slsaprovenance1").await;
    assert_refused_saying(&verdict, Reason::AttestationOtherDigest, &[&first.digest]);
}

/// Each `cosign attest --type` name maps to the predicate type cosign writes: real predicates of each
/// kind, required by that name, admit.
#[tokio::test]
async fn cosign_type_names_match_what_cosign_writes() {
    let (registry, cosign, image) = signed_image(Format::Bundle, "every-type").await;
    let predicates = [
        (
            "slsaprovenance",
            json!({"builder": {"id": BUILDER}, "buildType": "https://example.com/b/v1"}),
        ),
        (
            "spdxjson",
            json!({"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "app",
                   "dataLicense": "CC0-1.0", "packages": []}),
        ),
        (
            "cyclonedx",
            json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": []}),
        ),
        (
            "vuln",
            json!({"scanner": {"uri": "pkg:github/aquasecurity/trivy", "version": "0.50.0",
                               "result": {"Results": []}},
                   "metadata": {"scanStartedOn": "2026-01-01T00:00:00Z",
                                "scanFinishedOn": "2026-01-01T00:01:00Z"}}),
        ),
        (
            "openvex",
            json!({"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/1",
                   "author": "acme", "timestamp": "2026-01-01T00:00:00Z", "version": 1,
                   "statements": []}),
        ),
    ];
    for (kind, predicate) in &predicates {
        cosign.attest(&image.reference, kind, predicate, Format::Bundle);
    }
    for (kind, _) in &predicates {
        let verdict = verify_requiring(&registry, &cosign, &image, kind).await;
        assert_admitted(&verdict);
    }
    let every: Vec<&str> = predicates.iter().map(|(kind, _)| *kind).collect();
    assert_admitted(
        &verify(
            &image.reference,
            &requiring(&registry, &cosign, &every).compile(),
        )
        .await,
    );
}

// ---------------------------------------------------------------------------------------------------
// Keyless authorities: the same certificate checks as signatures (a CA of the tests' own, no log)

const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

#[tokio::test]
async fn keyless_attestations_count_for_the_accepted_identity_only() {
    for format in [Format::Legacy, Format::Bundle] {
        let registry = match format {
            Format::Bundle => Registry::with_referrers(),
            Format::Legacy => Registry::distribution(),
        };
        let ca = TestCa::new("ci-ca");
        let image = registry
            .push_image("team/app", "v1", &format!("keyless-att-{format:?}"))
            .await;
        let leaf = ca.issue(ISSUER, SUBJECT);
        leaf.sign(&image.reference, format);
        let policy = PolicySpec::keyless(&registry.host, ISSUER, SUBJECT)
            .fulcio_ca(&ca.chain_pem())
            .transparency_log(false, None)
            .requiring_attestations(["slsaprovenance1"])
            .compile();

        // Another identity of the same CA attests: not this authority's attestation.
        ca.issue(ISSUER, "https://ci.example/evil").attest(
            &image.reference,
            "slsaprovenance1",
            &provenance(BUILDER),
            format,
        );
        assert_refused(
            &verify(&image.reference, &policy).await,
            Reason::AttestationOtherSigner,
        );

        leaf.attest(
            &image.reference,
            "slsaprovenance1",
            &provenance(BUILDER),
            format,
        );
        let verdict = verify(&image.reference, &policy).await;
        assert_admitted(&verdict);
        let json = serde_json::to_value(&verdict.policies[0]).unwrap();
        let found = json["authorities"][0]["attestations"].as_array().unwrap();
        assert_eq!(
            found.iter().filter(|a| a["counted"] == true).count(),
            1,
            "{json:#}"
        );
    }
}

/// The bundle path of [`an_attestation_copied_from_another_digest_does_not_count`]: the referrer that
/// holds a bundle attestation of the first image, pushed again with the second image as its
/// `subject`. Anyone who may push can do that without any key, and it is how a bundle whose statement
/// names another digest reaches an image: cosign itself cannot attach one (`cosign attest
/// --statement` refuses a subject other than the image, and `cosign attach attestation` writes the
/// legacy `.att` tag only).
#[tokio::test]
async fn a_bundle_attestation_referring_to_another_digest_does_not_count() {
    let (registry, cosign, first) = signed_image(Format::Bundle, "bundle-copied-from").await;
    cosign.attest(
        &first.reference,
        "slsaprovenance1",
        &provenance(BUILDER),
        Format::Bundle,
    );
    let second = registry
        .push_image("team/app", "v2", "bundle-copied-to")
        .await;
    cosign.sign(&second.reference, Format::Bundle);
    copy_attestation_referrer(&registry, &first, &second).await;

    let verdict = verify_requiring(&registry, &cosign, &second, "slsaprovenance1").await;
    assert_refused_saying(&verdict, Reason::AttestationOtherDigest, &[&first.digest]);
    let found = first_attestation(&verdict);
    assert_eq!(found["format"], "bundle", "{found:#}");
    assert_eq!(found["reasonKind"], "attestation_other_digest", "{found:#}");
    assert_eq!(found["predicateType"], SLSA1, "{found:#}");
}

/// Pushes the referrer manifests of `from` that hold attestations (not cosign's signature bundle)
/// again, with `to` as their subject.
pub async fn copy_attestation_referrer(registry: &Registry, from: &PushedImage, to: &PushedImage) {
    let repository = &from.repository;
    let url = registry.url(&format!("/v2/{repository}/referrers/{}", from.digest));
    let referrers: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let (_, _, media_type, subject) = registry.get_manifest(&to.repository, &to.digest).await;
    let mut copied = 0;
    for descriptor in referrers["manifests"].as_array().unwrap() {
        let (_, _, _, body) = registry
            .get_manifest(repository, descriptor["digest"].as_str().unwrap())
            .await;
        let mut manifest: Value = serde_json::from_slice(&body).unwrap();
        if manifest["annotations"]["dev.sigstore.bundle.predicateType"]
            == "https://sigstore.dev/cosign/sign/v1"
        {
            continue;
        }
        manifest["subject"] = json!({
            "mediaType": media_type.clone().unwrap(),
            "digest": to.digest,
            "size": subject.len(),
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = crate::support::registry::sha256(&bytes);
        registry
            .push_manifest(
                &to.repository,
                &digest,
                crate::support::registry::OCI_MANIFEST,
                &bytes,
            )
            .await;
        copied += 1;
    }
    assert_eq!(copied, 1, "one attestation referrer expected: {referrers}");
}

/// Each attestation reason is a metrics label: one refusal for each, through `registryx-guard serve`,
/// is counted under `registryx_guard_admission_decisions_total{decision="deny",policy=...,reason=...}`
/// on /metrics.
#[tokio::test]
async fn each_attestation_refusal_is_counted_under_its_reason_on_metrics() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = |tag: &'static str| {
        let (registry, cosign) = (&registry, &cosign);
        async move {
            let image = registry
                .push_image("team/app", tag, &format!("metrics-{tag}"))
                .await;
            cosign.sign(&image.reference, Format::Legacy);
            image
        }
    };
    let missing = image("missing").await;
    let other_signer = image("other-signer").await;
    Cosign::with_new_key_pair().attest(
        &other_signer.reference,
        "slsaprovenance1",
        &provenance(BUILDER),
        Format::Legacy,
    );
    let other_type = image("other-type").await;
    cosign.attest(
        &other_type.reference,
        "slsaprovenance02",
        &json!({"builder": {"id": BUILDER}, "buildType": "x"}),
        Format::Legacy,
    );
    let other_digest = image("other-digest").await;
    let source = image("source").await;
    cosign.attest(
        &source.reference,
        "slsaprovenance1",
        &provenance(BUILDER),
        Format::Legacy,
    );
    let att = |digest: &str| format!("{}.att", digest.replace(':', "-"));
    let (_, _, media_type, bytes) = registry
        .get_manifest("team/app", &att(&source.digest))
        .await;
    registry
        .push_manifest(
            "team/app",
            &att(&other_digest.digest),
            media_type.as_deref().unwrap(),
            &bytes,
        )
        .await;

    let policy = requiring(&registry, &cosign, &["slsaprovenance1"])
        .named("provenance")
        .yaml();
    let cases = [
        (missing, "attestation_missing"),
        (other_signer, "attestation_other_signer"),
        (other_type, "attestation_other_type"),
        (other_digest, "attestation_other_digest"),
    ];
    let images: Vec<String> = cases.iter().map(|(image, _)| image.by_digest()).collect();
    let last = format!(
        "registryx_guard_admission_decisions_total{{decision=\"deny\",policy=\"provenance\",reason=\"{}\"}} 1",
        cases[3].1
    );
    // The server and its blocking clients, off the test's runtime.
    let (answers, metrics) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        crate::support::serve_files(dir.path(), &policy);
        let (port, https) = (crate::support::free_port(), crate::support::free_port());
        let mut server = crate::support::serve_command(dir.path(), port, https)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::support::metrics_once(port, "registryx_guard_policies{ready=\"true\"} 1");
        let answers: Vec<_> = images
            .iter()
            .map(|image| {
                let review = crate::support::pod_create_review(&[("app", image)]);
                crate::support::post_validate(https, &review)
            })
            .collect();
        let metrics = crate::support::metrics_once(port, &last);
        let _ = server.kill();
        let _ = server.wait();
        (answers, metrics)
    })
    .await
    .unwrap();
    for (answered, (image, reason)) in answers.into_iter().zip(&cases) {
        let answered = answered.expect("the review is answered");
        assert_eq!(
            answered["response"]["allowed"], false,
            "{}: {answered}",
            image.tag
        );
        let line = format!(
            "registryx_guard_admission_decisions_total{{decision=\"deny\",policy=\"provenance\",reason=\"{reason}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
}
