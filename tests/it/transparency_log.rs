//! The offline transparency-log checks, with the tests acting as Rekor (`support::rekor`): a log key of
//! their own signs entry timestamps (SETs) over hashedrekord entries of real cosign signatures, and
//! each entry is attached the way cosign attaches one, as the `dev.sigstore.cosign/bundle` annotation
//! of the `.sig` layer. Attestations' entries: `attestation_log.rs`.

use registryx_guard::refusal::Reason;

use crate::support::cosign::{Cosign, Format};
use crate::support::keyless::TestCa;
use crate::support::policy::PolicySpec;
use crate::support::registry::{PushedImage, Registry};
use crate::support::rekor::{Entry, TestRekor, hashedrekord, now};
use crate::support::verdicts::{
    StoredSignature, altered_signature, assert_admitted, assert_refused_saying, first_proof,
    legacy_signed_image, verify,
};
use registryx_guard::verify::ImageVerdict;
use sha2::{Digest as _, Sha256};

const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

/// A key-signed legacy signature, read back, and the log that the policy trusts.
struct Logged {
    registry: Registry,
    cosign: Cosign,
    image: PushedImage,
    stored: StoredSignature,
    rekor: TestRekor,
}

impl Logged {
    async fn new(seed: &str) -> Logged {
        let (registry, cosign, image) = legacy_signed_image(seed).await;
        let stored = StoredSignature::read(&registry, &image).await;
        Logged {
            registry,
            cosign,
            image,
            stored,
            rekor: TestRekor::new(),
        }
    }

    /// The honest entry of the signature, integrated at `integrated_time`.
    fn entry(&self, integrated_time: i64) -> Entry {
        let body = self.stored.body(&self.cosign.public_key_pem());
        self.rekor.entry(body, integrated_time)
    }

    async fn attach(&self, bundle: &str) {
        self.stored
            .attach(&self.registry, &self.image, bundle)
            .await;
    }

    /// Has the trusted log sign, now, an entry that logs `signature` (base64) of the payload whose
    /// SHA-256 is `payload_sha256`, and attaches it.
    async fn attach_logged(&self, payload_sha256: &str, signature: &str) {
        let body = hashedrekord(payload_sha256, signature, &self.cosign.public_key_pem());
        self.attach(&self.rekor.bundle(&self.rekor.entry(body, now())))
            .await;
    }

    /// The image's verdict under a key policy that requires an entry of the trusted log.
    async fn verdict(&self) -> ImageVerdict {
        let policy = PolicySpec::key(&self.registry.host, &self.cosign.public_key_pem())
            .transparency_log(true, Some(&self.rekor.public_key_pem()))
            .compile();
        verify(&self.image.reference, &policy).await
    }
}

#[tokio::test]
async fn admits_a_signature_logged_by_the_trusted_log_and_reports_the_integrated_time() {
    let logged = Logged::new("logged").await;
    let integrated_time = now() - 60;
    logged
        .attach(&logged.rekor.bundle(&logged.entry(integrated_time)))
        .await;

    let verdict = logged.verdict().await;
    assert_admitted(&verdict);
    let proof = first_proof(&verdict);
    assert_eq!(proof.rekor_integrated_time, Some(integrated_time));
    assert_eq!(proof.format, "legacy");
}

#[tokio::test]
async fn refuses_a_signature_without_a_log_entry_when_one_is_required() {
    // The plain cosign signature: no bundle annotation.
    let logged = Logged::new("unlogged").await;
    assert_refused_saying(
        &logged.verdict().await,
        Reason::TransparencyLog,
        &["no transparency-log entry accompanies the signature, and this authority requires one"],
    );
}

#[tokio::test]
async fn refuses_an_entry_timestamp_signed_by_another_key() {
    let logged = Logged::new("rogue-log").await;
    let rogue = TestRekor::new();

    // Signed by another key while naming the trusted log.
    let entry = logged.entry(now());
    logged.attach(&entry.bundle(&rogue.sign(&entry))).await;
    assert_refused_saying(
        &logged.verdict().await,
        Reason::TransparencyLog,
        &["the transparency-log entry's signed timestamp does not verify with the Rekor key"],
    );

    // An entry that the other log really signed, under its own log ID.
    let entry = Entry {
        log_id: rogue.log_id(),
        ..logged.entry(now())
    };
    logged.attach(&rogue.bundle(&entry)).await;
    assert_refused_saying(
        &logged.verdict().await,
        Reason::TransparencyLog,
        &[&format!(
            "the transparency-log entry comes from log {}, which this authority does not trust",
            rogue.log_id()
        )],
    );
}

#[tokio::test]
async fn refuses_an_entry_whose_fields_changed_after_signing() {
    let logged = Logged::new("changed-entry").await;
    let entry = logged.entry(now() - 3600);
    let set = logged.rekor.sign(&entry);
    logged.attach(&entry.bundle(&set)).await;
    assert_admitted(&logged.verdict().await);

    // The entry timestamp covers the time (which dates a certificate) and the index.
    for changed in [
        Entry {
            integrated_time: entry.integrated_time + 1,
            ..entry.clone()
        },
        Entry {
            log_index: entry.log_index + 1,
            ..entry.clone()
        },
    ] {
        logged.attach(&changed.bundle(&set)).await;
        assert_refused_saying(
            &logged.verdict().await,
            Reason::TransparencyLog,
            &["signed timestamp does not verify with the Rekor key"],
        );
    }
}

/// What an entry that logs something else than the stored signature is for.
enum LogsInstead {
    AnotherPayload,
    AnotherSignature,
}

#[tokio::test]
async fn refuses_an_entry_that_logs_another_payload_or_signature() {
    for (seed, instead, refusal) in [
        (
            "other-payload",
            LogsInstead::AnotherPayload,
            "the transparency-log entry is for another payload",
        ),
        (
            "other-signature",
            LogsInstead::AnotherSignature,
            "the transparency-log entry is for another signature",
        ),
    ] {
        let logged = Logged::new(seed).await;
        let stored = &logged.stored;
        let (payload_sha256, signature) = match instead {
            LogsInstead::AnotherPayload => (
                hex::encode(Sha256::digest(b"another simple-signing payload")),
                stored.signature.clone(),
            ),
            LogsInstead::AnotherSignature => (
                stored.payload_sha256.clone(),
                altered_signature(&stored.signature),
            ),
        };
        logged.attach_logged(&payload_sha256, &signature).await;
        assert_refused_saying(&logged.verdict().await, Reason::TransparencyLog, &[refusal]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Keyless: the certificate must have been valid when the log integrated the signature.

/// A legacy signature by a leaf of `ca`, with its entry in `rekor`'s log integrated at
/// `integrated_time`, checked by a keyless policy that trusts both (and so requires an entry).
async fn keyless_verdict(seed: &str, integrated_time: i64) -> ImageVerdict {
    let registry = Registry::distribution();
    let ca = TestCa::new("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);
    let image = registry.push_image("team/app", "v1", seed).await;
    leaf.sign(&image.reference, Format::Legacy);
    let stored = StoredSignature::read(&registry, &image).await;
    let rekor = TestRekor::new();
    let entry = rekor.entry(stored.body(leaf.cert_pem()), integrated_time);
    stored
        .attach(&registry, &image, &rekor.bundle(&entry))
        .await;

    let policy = PolicySpec::keyless(&registry.host, ISSUER, SUBJECT)
        .fulcio_ca(&ca.chain_pem())
        .rekor_key(&rekor.public_key_pem())
        .compile();
    verify(&image.reference, &policy).await
}

#[tokio::test]
async fn admits_a_keyless_signature_logged_while_its_certificate_was_valid() {
    // The test CA's certificates are valid from an hour ago to a day ahead.
    let integrated_time = now() - 600;
    let verdict = keyless_verdict("keyless-logged", integrated_time).await;
    assert_admitted(&verdict);
    let proof = first_proof(&verdict);
    assert_eq!(proof.rekor_integrated_time, Some(integrated_time));
    assert_eq!(
        (proof.issuer.as_deref(), proof.subject.as_deref()),
        (Some(ISSUER), Some(SUBJECT))
    );
}

#[tokio::test]
async fn refuses_a_keyless_signature_logged_outside_its_certificate_validity() {
    for (seed, integrated_time, error) in [
        ("logged-before-issue", now() - 2 * 86_400, "CertNotValidYet"),
        ("logged-after-expiry", now() + 2 * 86_400, "CertExpired"),
    ] {
        assert_refused_saying(
            &keyless_verdict(seed, integrated_time).await,
            Reason::Certificate,
            &[
                "the signing certificate does not chain to this authority's trust root",
                error,
            ],
        );
    }
}
