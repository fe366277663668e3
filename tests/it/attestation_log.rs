//! Attestations under the transparency-log rules of signatures (issue 20): an authority that requires a
//! log entry (keyless by default, a key authority with `transparencyLog.required`) counts an attestation
//! only with an entry of a log it trusts that logs this very envelope by this signer, in both of
//! cosign's formats: the `dev.sigstore.cosign/bundle` annotation of the legacy `.att` layer (checked by
//! the same code as that of a `.sig` layer), and a bundle's `tlogEntries`.
//!
//! Real `cosign attest` output, made offline; the tests act as Rekor (`support::rekor`) and attach the
//! entries where cosign attaches them: the `.att` manifest is written back with the annotation, and a
//! bundle referrer is replaced by the same bundle with its `tlogEntries` (the referrer cosign wrote,
//! without entries, is deleted, so that only the logged one is found).

use registryx_guard::refusal::Reason;
use registryx_guard::verify::ImageVerdict;
use serde_json::{Value, json};

use crate::support::cosign::{Cosign, Format};
use crate::support::keyless::{Leaf, TestCa};
use crate::support::policy::PolicySpec;
use crate::support::registry::{OCI_MANIFEST, PushedImage, Registry, sha256};
use crate::support::rekor::{Entry, TestRekor, dsse, envelope_parts, hashedrekord, intoto, now};
use crate::support::verdicts::{
    assert_admitted, assert_refused_saying, get_blob, put_signature_manifest, signature_manifest,
    verify,
};

const SLSA1: &str = "https://slsa.dev/provenance/v1";
const COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
const REKOR_BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

fn provenance() -> Value {
    json!({"runDetails": {"builder": {"id": "https://github.com/acme/.github/workflows/release.yml@refs/heads/main"}}})
}

/// Who signs and attests: a key of cosign's, or a leaf of the tests' CA.
pub(super) enum Signer {
    Key(Cosign),
    Keyless { ca: Box<TestCa>, leaf: Leaf },
}

impl Signer {
    pub(super) fn key() -> Signer {
        Signer::Key(Cosign::with_new_key_pair())
    }

    pub(super) fn keyless() -> Signer {
        let ca = Box::new(TestCa::new("logged-ca"));
        let leaf = ca.issue(ISSUER, SUBJECT);
        Signer::Keyless { ca, leaf }
    }

    /// What a log entry names as the signer: the public key, or the certificate.
    pub(super) fn verifier_pem(&self) -> String {
        match self {
            Signer::Key(cosign) => cosign.public_key_pem(),
            Signer::Keyless { leaf, .. } => leaf.cert_pem().to_owned(),
        }
    }

    fn sign(&self, image: &str) {
        match self {
            Signer::Key(cosign) => cosign.sign(image, Format::Legacy),
            Signer::Keyless { leaf, .. } => leaf.sign(image, Format::Legacy),
        }
    }

    fn attest(&self, image: &str, format: Format) {
        match self {
            Signer::Key(cosign) => cosign.attest(image, "slsaprovenance1", &provenance(), format),
            Signer::Keyless { leaf, .. } => {
                leaf.attest(image, "slsaprovenance1", &provenance(), format)
            }
        }
    }

    /// The policy that trusts this signer and `rekor`'s log, requires an entry of it, and requires
    /// a provenance attestation.
    pub(super) fn policy(&self, host: &str, rekor: &TestRekor) -> PolicySpec {
        let policy = match self {
            Signer::Key(cosign) => PolicySpec::key(host, &cosign.public_key_pem())
                .transparency_log(true, Some(&rekor.public_key_pem())),
            // Keyless requires a log entry by default.
            Signer::Keyless { ca, .. } => PolicySpec::keyless(host, ISSUER, SUBJECT)
                .fulcio_ca(&ca.chain_pem())
                .rekor_key(&rekor.public_key_pem()),
        };
        policy.requiring_attestations(["slsaprovenance1"])
    }
}

/// An image signed by `signer` (legacy, its signature logged in `rekor`) and attested in `format`,
/// the attestation not logged yet.
pub(super) struct Attested {
    pub(super) registry: Registry,
    pub(super) image: PushedImage,
    pub(super) signer: Signer,
    pub(super) rekor: TestRekor,
    format: Format,
}

impl Attested {
    pub(super) async fn new(signer: Signer, format: Format, seed: &str) -> Attested {
        let registry = match format {
            Format::Bundle => Registry::with_referrers(),
            Format::Legacy => Registry::distribution(),
        };
        let image = registry.push_image("team/app", "v1", seed).await;
        signer.sign(&image.reference);
        let rekor = TestRekor::new();
        let attested = Attested {
            registry,
            image,
            signer,
            rekor,
            format,
        };
        attested.log_signature().await;
        attested.signer.attest(&attested.image.reference, format);
        attested
    }

    /// Logs the legacy signature (a hashedrekord entry), so that the signature itself verifies.
    async fn log_signature(&self) {
        let mut manifest = signature_manifest(&self.registry, &self.image).await;
        let layer = &manifest["layers"][0];
        let payload = get_blob(
            &self.registry,
            &self.image.repository,
            layer["digest"].as_str().unwrap(),
        )
        .await;
        let signature = layer["annotations"]["dev.cosignproject.cosign/signature"]
            .as_str()
            .unwrap();
        let body = hashedrekord(
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&payload)),
            signature,
            &self.signer.verifier_pem(),
        );
        let bundle = self.rekor.bundle(&self.rekor.entry(body, now() - 60));
        manifest["layers"][0]["annotations"][REKOR_BUNDLE_ANNOTATION] = bundle.into();
        put_signature_manifest(&self.registry, &self.image, &manifest).await;
    }

    /// The stored attestation: its envelope's bytes (the `.att` layer, or the bundle's
    /// `dsseEnvelope` serialized), its payload and its signature.
    async fn envelope(&self) -> (Vec<u8>, Vec<u8>, String) {
        let envelope = match self.format {
            Format::Legacy => self.att_layer().await.1,
            Format::Bundle => {
                let (_, _, bundle) = self.attestation_referrer().await;
                serde_json::to_vec(&bundle["dsseEnvelope"]).unwrap()
            }
        };
        let (payload, signature) = envelope_parts(&serde_json::from_slice(&envelope).unwrap());
        (envelope, payload, signature)
    }

    /// The honest dsse entry of the attestation (what cosign v2.4 on logs), integrated at `time`.
    pub(super) async fn entry(&self, time: i64) -> Entry {
        let (envelope, payload, signature) = self.envelope().await;
        let body = dsse(&envelope, &payload, &signature, &self.signer.verifier_pem());
        self.rekor.entry(body, time)
    }

    fn att_tag(&self) -> String {
        format!("{}.att", self.image.digest.replace(':', "-"))
    }

    /// The `.att` manifest and its (one) layer's blob.
    async fn att_layer(&self) -> (Value, Vec<u8>) {
        let (status, _, _, body) = self
            .registry
            .get_manifest(&self.image.repository, &self.att_tag())
            .await;
        assert_eq!(status, 200, "no {}", self.att_tag());
        let manifest: Value = serde_json::from_slice(&body).unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
        let blob = get_blob(&self.registry, &self.image.repository, &layer).await;
        (manifest, blob)
    }

    /// The referrer that holds the attestation bundle: its digest, manifest and bundle.
    async fn attestation_referrer(&self) -> (String, Value, Value) {
        let repository = &self.image.repository;
        let url = self
            .registry
            .url(&format!("/v2/{repository}/referrers/{}", self.image.digest));
        let referrers: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        for descriptor in referrers["manifests"].as_array().unwrap() {
            let digest = descriptor["digest"].as_str().unwrap();
            let (_, _, _, body) = self.registry.get_manifest(repository, digest).await;
            let manifest: Value = serde_json::from_slice(&body).unwrap();
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            let bundle: Value =
                serde_json::from_slice(&get_blob(&self.registry, repository, layer).await).unwrap();
            let (payload, _) = envelope_parts(&bundle["dsseEnvelope"]);
            let statement: Value = serde_json::from_slice(&payload).unwrap();
            if statement["predicateType"] != COSIGN_SIGN {
                return (digest.to_owned(), manifest, bundle);
            }
        }
        panic!("no attestation bundle among the referrers: {referrers}");
    }

    /// Attaches a log entry to the attestation where cosign would have: `annotation` (the Rekor
    /// bundle) on the legacy `.att` layer, or `tlog_entry` as the bundle's one `tlogEntries` item.
    pub(super) async fn attach(&self, annotation: &str, tlog_entry: Value) {
        let repository = &self.image.repository;
        match self.format {
            Format::Legacy => {
                let (mut manifest, _) = self.att_layer().await;
                manifest["layers"][0]["annotations"][REKOR_BUNDLE_ANNOTATION] = annotation.into();
                self.registry
                    .push_manifest(
                        repository,
                        &self.att_tag(),
                        OCI_MANIFEST,
                        &serde_json::to_vec(&manifest).unwrap(),
                    )
                    .await;
            }
            Format::Bundle => {
                let (old, mut manifest, mut bundle) = self.attestation_referrer().await;
                bundle["verificationMaterial"]["tlogEntries"] = json!([tlog_entry]);
                let blob = serde_json::to_vec(&bundle).unwrap();
                let digest = self.registry.push_blob(repository, &blob).await;
                manifest["layers"][0]["digest"] = digest.into();
                manifest["layers"][0]["size"] = blob.len().into();
                let bytes = serde_json::to_vec(&manifest).unwrap();
                self.registry
                    .push_manifest(repository, &sha256(&bytes), OCI_MANIFEST, &bytes)
                    .await;
                self.registry.delete_manifest(repository, &old).await;
            }
        }
    }

    /// Has the trusted log sign `entry` and attaches it.
    pub(super) async fn attach_logged(&self, entry: &Entry) {
        self.attach(
            &self.rekor.bundle(entry),
            self.rekor.bundle_entry(entry, "dsse"),
        )
        .await;
    }

    async fn verdict(&self) -> ImageVerdict {
        let policy = self.signer.policy(&self.registry.host, &self.rekor);
        verify(&self.image.reference, &policy.compile()).await
    }
}

/// The evidence JSON (as `verify --output json` shows it) of the first attestation found.
fn first_attestation(verdict: &ImageVerdict) -> Value {
    let json = serde_json::to_value(&verdict.policies[0]).unwrap();
    json["authorities"][0]["attestations"][0].clone()
}

#[tokio::test]
async fn an_authority_that_requires_the_log_counts_only_logged_attestations() {
    for (signer, format) in [
        (Signer::key(), Format::Legacy),
        (Signer::key(), Format::Bundle),
        (Signer::keyless(), Format::Legacy),
        (Signer::keyless(), Format::Bundle),
    ] {
        let keyless = matches!(signer, Signer::Keyless { .. });
        let case = format!("keyless {keyless}, {format:?}");
        let attested = Attested::new(signer, format, &format!("logged-{keyless}-{format:?}")).await;

        // As cosign attests offline: no entry. The signature verifies, the attestation does not count.
        let missing = match format {
            Format::Legacy => {
                "no transparency-log entry accompanies the attestation, and this authority requires one"
            }
            Format::Bundle => {
                "the bundle has no transparency-log entry, and this authority requires one"
            }
        };
        let verdict = attested.verdict().await;
        assert_refused_saying(&verdict, Reason::TransparencyLog, &[missing, SLSA1]);
        let found = first_attestation(&verdict);
        assert_eq!(found["counted"], false, "{case}: {found:#}");
        assert_eq!(found["reasonKind"], "transparency_log", "{case}: {found:#}");

        // Logged: counted, with the time the log integrated it.
        let integrated_time = now() - 30;
        attested
            .attach_logged(&attested.entry(integrated_time).await)
            .await;
        let verdict = attested.verdict().await;
        assert_admitted(&verdict);
        let found = first_attestation(&verdict);
        assert_eq!(found["counted"], true, "{case}: {found:#}");
        assert_eq!(found["rekorIntegratedTime"], integrated_time, "{case}");
        assert_eq!(found["predicateType"], SLSA1, "{case}");
    }
}

#[tokio::test]
async fn a_tampered_entry_does_not_count_where_the_log_is_required() {
    for format in [Format::Legacy, Format::Bundle] {
        let attested = Attested::new(Signer::key(), format, &format!("tampered-{format:?}")).await;
        let entry = attested.entry(now() - 60).await;

        // The integrated time changed after the log signed the entry.
        let set = attested.rekor.sign(&entry);
        let changed = Entry {
            integrated_time: entry.integrated_time + 1,
            ..entry.clone()
        };
        let mut tlog_entry = attested.rekor.bundle_entry(&changed, "dsse");
        tlog_entry["inclusionPromise"]["signedEntryTimestamp"] = set.clone().into();
        attested.attach(&changed.bundle(&set), tlog_entry).await;
        let verdict = attested.verdict().await;
        assert_refused_saying(
            &verdict,
            Reason::TransparencyLog,
            &["the transparency-log entry's signed timestamp does not verify with the Rekor key"],
        );
        let found = first_attestation(&verdict);
        assert_eq!(
            found["reasonKind"], "transparency_log",
            "{format:?}: {found:#}"
        );
        assert!(
            found["reason"]
                .as_str()
                .is_some_and(|r| r.contains("signed timestamp does not verify")),
            "{format:?}: {found:#}"
        );

        // An entry the trusted log really signed, but for another attestation (payload).
        let (envelope, _, signature) = attested.envelope().await;
        let other = dsse(
            &envelope,
            br#"{"_type":"https://in-toto.io/Statement/v1","predicateType":"x"}"#,
            &signature,
            &attested.signer.verifier_pem(),
        );
        attested
            .attach_logged(&attested.rekor.entry(other, now()))
            .await;
        assert_refused_saying(
            &attested.verdict().await,
            Reason::TransparencyLog,
            &["the transparency-log entry is for another payload"],
        );

        // Signed by a log the policy does not trust.
        let rogue = TestRekor::new();
        let foreign = Entry {
            log_id: rogue.log_id(),
            ..entry.clone()
        };
        attested
            .attach(
                &rogue.bundle(&foreign),
                rogue.bundle_entry(&foreign, "dsse"),
            )
            .await;
        assert_refused_saying(
            &attested.verdict().await,
            Reason::TransparencyLog,
            &["which this authority does not trust"],
        );

        // Where the log is optional, the foreign entry is set aside: the attestation stands on its
        // signature, without an integrated time.
        let optional = PolicySpec::key(&attested.registry.host, &attested.signer.verifier_pem())
            .transparency_log(false, Some(&attested.rekor.public_key_pem()))
            .requiring_attestations(["slsaprovenance1"]);
        let verdict = verify(&attested.image.reference, &optional.compile()).await;
        assert_admitted(&verdict);
        let found = first_attestation(&verdict);
        assert_eq!(found["counted"], true, "{format:?}: {found:#}");
        assert_eq!(found["rekorIntegratedTime"], Value::Null, "{format:?}");
    }
}

/// cosign before v2.4 logged a legacy attestation as an `intoto` v0.0.1 entry: the hash of the whole
/// envelope (which holds the signature) instead of the signature itself.
#[tokio::test]
async fn an_intoto_entry_of_older_cosign_counts_when_it_hashes_this_envelope() {
    let attested = Attested::new(Signer::key(), Format::Legacy, "intoto-entry").await;
    let (envelope, payload, _) = attested.envelope().await;
    let pem = attested.signer.verifier_pem();

    let mut altered = envelope.clone();
    altered.push(b'\n');
    let wrong = attested
        .rekor
        .entry(intoto(&altered, &payload, &pem), now());
    attested.attach_logged(&wrong).await;
    assert_refused_saying(
        &attested.verdict().await,
        Reason::TransparencyLog,
        &["the transparency-log entry is for another envelope"],
    );

    let integrated_time = now() - 5;
    let entry = attested
        .rekor
        .entry(intoto(&envelope, &payload, &pem), integrated_time);
    attested.attach_logged(&entry).await;
    let verdict = attested.verdict().await;
    assert_admitted(&verdict);
    assert_eq!(
        first_attestation(&verdict)["rekorIntegratedTime"],
        integrated_time
    );
}

/// An image that is attested but not signed is unsigned, whatever its attestation lacks: the bundle's
/// missing log entry (or its other signer) is not the reason a signature is missing.
#[tokio::test]
async fn an_unsigned_image_with_an_unlogged_attestation_is_refused_as_unsigned() {
    let registry = Registry::with_referrers();
    let image = registry
        .push_image("team/app", "v1", "attested-unsigned")
        .await;
    let signer = Signer::key();
    let intruder = Signer::key();
    signer.attest(&image.reference, Format::Bundle);
    intruder.attest(&image.reference, Format::Bundle);
    let rekor = TestRekor::new();
    let verdict = verify(
        &image.reference,
        &signer.policy(&registry.host, &rekor).compile(),
    )
    .await;
    assert_refused_saying(
        &verdict,
        Reason::NoSignature,
        &[
            "the bundle is an attestation of type \"https://slsa.dev/provenance/v1\", not a cosign signature",
        ],
    );
}
