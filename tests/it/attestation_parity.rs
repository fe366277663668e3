//! Decisions identical to `cosign verify-attestation` (issue 20): the same material, a row per case,
//! judged by real cosign and by `registryx-guard verify`, which must agree on accept or refuse.
//!
//! The policy requires `slsaprovenance1` of one authority (a key, or the identity of a leaf of the tests'
//! CA), with no transparency log: cosign is run with `--insecure-ignore-tlog` (and, keyless, with
//! `--insecure-ignore-sct`, the CA logging to no CT log), against the key (`--key`), or for keyless
//! against the CA: `--ca-roots` for legacy `.att` attestations, a trusted-root file and
//! `--allow-certificate-chain` for bundles (cosign attests with `--certificate-chain`, which it writes
//! as an `x509CertificateChain`). Every image is signed by the authority too: registryx-guard requires
//! the signature beside the attestation, `cosign verify-attestation` looks at attestations only.

use std::process::{Command, Output};

use serde_json::json;

use crate::support::cosign::{Cosign, Format};
use crate::support::keyless::{Leaf, TestCa};
use crate::support::policy::PolicySpec;
use crate::support::registry::{OCI_MANIFEST, PushedImage, Registry};

const ISSUER: &str = "https://issuer.ci.example";
const SUBJECT: &str = "https://ci.example/team/app/.github/workflows/release.yaml@refs/heads/main";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Authority {
    Key,
    Keyless,
}

/// What is stored beside the signed image.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// A provenance attestation by the authority.
    Attested,
    /// A provenance attestation by another key (keyless: another identity of the same CA).
    WrongSigner,
    /// No attestation.
    Missing,
    /// An attestation by the authority, of SLSA provenance v0.2 instead of v1.
    OtherType,
    /// The authority's attestation of another image, copied to this one (the `.att` manifest, or the
    /// bundle referrer re-pushed with this image as its subject).
    OtherDigest,
}

struct Material {
    cosign: Cosign,
    intruder: Cosign,
    ca: TestCa,
    leaf: Leaf,
    intruder_leaf: Leaf,
}

impl Material {
    fn sign(&self, authority: Authority, image: &str, format: Format) {
        match authority {
            Authority::Key => self.cosign.sign(image, format),
            Authority::Keyless => self.leaf.sign(image, format),
        }
    }

    fn attest(&self, authority: Authority, image: &str, kind: &str, format: Format, honest: bool) {
        let predicate = match kind {
            "slsaprovenance02" => {
                json!({"builder": {"id": "https://ci.example/builder"}, "buildType": "https://ci.example/b"})
            }
            _ => json!({"runDetails": {"builder": {"id": "https://ci.example/builder"}}}),
        };
        match (authority, honest) {
            (Authority::Key, true) => self.cosign.attest(image, kind, &predicate, format),
            (Authority::Key, false) => self.intruder.attest(image, kind, &predicate, format),
            (Authority::Keyless, true) => self.leaf.attest(image, kind, &predicate, format),
            (Authority::Keyless, false) => {
                self.intruder_leaf.attest(image, kind, &predicate, format)
            }
        }
    }

    fn policy(&self, authority: Authority, host: &str) -> PolicySpec {
        let policy = match authority {
            Authority::Key => PolicySpec::key(host, &self.cosign.public_key_pem()),
            Authority::Keyless => PolicySpec::keyless(host, ISSUER, SUBJECT)
                .fulcio_ca(&self.ca.chain_pem())
                .transparency_log(false, None),
        };
        policy.requiring_attestations(["slsaprovenance1"])
    }

    /// `cosign verify-attestation --type slsaprovenance1` of `image` for the authority.
    fn cosign_verify(&self, authority: Authority, image: &str, format: Format) -> Output {
        let mut command = match authority {
            Authority::Key => {
                let mut command = self.cosign.command();
                command.arg("verify-attestation").arg("--key");
                command.arg(self.cosign.public_key());
                command
            }
            Authority::Keyless => {
                let mut command = self.leaf.command();
                command.arg("verify-attestation");
                match format {
                    Format::Legacy => command.arg("--ca-roots").arg(self.leaf.root_path()),
                    Format::Bundle => command
                        .arg("--trusted-root")
                        .arg(self.leaf.trusted_root_path())
                        .arg("--allow-certificate-chain"),
                };
                command
                    .args(["--certificate-identity", SUBJECT])
                    .args(["--certificate-oidc-issuer", ISSUER])
                    .arg("--insecure-ignore-sct=true");
                command
            }
        };
        command
            .args(["--type", "slsaprovenance1", "--insecure-ignore-tlog=true"])
            .arg(format!("--new-bundle-format={}", format == Format::Bundle))
            .arg(image)
            .output()
            .expect("run cosign verify-attestation")
    }
}

/// `registryx-guard verify` of `image` under `policy`: its output.
fn guard_verify(policy: &PolicySpec, image: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy.yaml()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .arg("verify")
        .arg(image)
        .arg("--policy")
        .arg(&path)
        .args(["--output", "json"])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copies the attestations of `from` to `to`: the `.att` manifest, or the attestation referrers.
async fn copy_attestations(
    registry: &Registry,
    format: Format,
    from: &PushedImage,
    to: &PushedImage,
) {
    match format {
        Format::Legacy => {
            let att = |digest: &str| format!("{}.att", digest.replace(':', "-"));
            let (status, _, _, bytes) = registry
                .get_manifest(&from.repository, &att(&from.digest))
                .await;
            assert_eq!(status, 200);
            registry
                .push_manifest(&to.repository, &att(&to.digest), OCI_MANIFEST, &bytes)
                .await;
        }
        Format::Bundle => {
            super::attestations::copy_attestation_referrer(registry, from, to).await;
        }
    }
}

#[tokio::test]
async fn registryx_guard_verify_decides_as_cosign_verify_attestation() {
    let ca = TestCa::new("parity-ca");
    let material = Material {
        cosign: Cosign::with_new_key_pair(),
        intruder: Cosign::with_new_key_pair(),
        leaf: ca.issue(ISSUER, SUBJECT),
        intruder_leaf: ca.issue(ISSUER, "https://ci.example/someone/else"),
        ca,
    };
    let (legacy, bundles) = (Registry::distribution(), Registry::with_referrers());
    use Authority::{Key, Keyless};
    use Case::*;
    use Format::{Bundle, Legacy};
    let rows: &[(Authority, Format, Case, bool)] = &[
        (Key, Legacy, Attested, true),
        (Key, Bundle, Attested, true),
        (Keyless, Legacy, Attested, true),
        (Keyless, Bundle, Attested, true),
        (Key, Legacy, WrongSigner, false),
        (Key, Bundle, WrongSigner, false),
        (Keyless, Legacy, WrongSigner, false),
        (Keyless, Bundle, WrongSigner, false),
        (Key, Legacy, Missing, false),
        (Key, Bundle, Missing, false),
        (Key, Legacy, OtherType, false),
        (Key, Bundle, OtherType, false),
        (Key, Legacy, OtherDigest, false),
        (Key, Bundle, OtherDigest, false),
        (Keyless, Bundle, OtherDigest, false),
    ];
    let mut table = Vec::new();
    for (i, &(authority, format, case, admitted)) in rows.iter().enumerate() {
        let registry = match format {
            Legacy => &legacy,
            Bundle => &bundles,
        };
        let repository = format!("row{i}/app");
        let image = registry
            .push_image(&repository, "v1", &format!("parity-{i}"))
            .await;
        material.sign(authority, &image.reference, format);
        match case {
            Attested => {
                material.attest(authority, &image.reference, "slsaprovenance1", format, true)
            }
            WrongSigner => material.attest(
                authority,
                &image.reference,
                "slsaprovenance1",
                format,
                false,
            ),
            Missing => {}
            OtherType => material.attest(
                authority,
                &image.reference,
                "slsaprovenance02",
                format,
                true,
            ),
            OtherDigest => {
                let other = registry
                    .push_image(&repository, "other", &format!("parity-{i}-other"))
                    .await;
                material.attest(authority, &other.reference, "slsaprovenance1", format, true);
                copy_attestations(registry, format, &other, &image).await;
            }
        }
        let reference = image.by_digest();
        let cosign = material.cosign_verify(authority, &reference, format);
        let guard = guard_verify(&material.policy(authority, &registry.host), &reference);
        assert!(
            matches!(guard.status.code(), Some(0 | 1)),
            "registryx-guard verify did not decide:\n{}",
            text(&guard)
        );
        let row = format!("{authority:?} {format:?} {case:?}");
        table.push((row.clone(), cosign.status.success(), guard.status.success()));
        assert_eq!(
            (cosign.status.success(), guard.status.success()),
            (admitted, admitted),
            "{authority:?} {format:?} {case:?}: expected admitted={admitted}\n\
             cosign verify-attestation:\n{}\nregistryx-guard verify:\n{}",
            text(&cosign),
            text(&guard)
        );
        // registryx-guard says why, in the evidence `verify --output json` shows.
        let json: serde_json::Value = serde_json::from_slice(&guard.stdout)
            .unwrap_or_else(|e| panic!("{row}: {e}\n{}", text(&guard)));
        let policy = &json["policies"][0];
        let reason = match case {
            Attested => serde_json::Value::Null,
            WrongSigner => "attestation_other_signer".into(),
            Missing => "attestation_missing".into(),
            OtherType => "attestation_other_type".into(),
            OtherDigest => "attestation_other_digest".into(),
        };
        assert_eq!(policy["reasonKind"], reason, "{row}: {policy:#}");
        // (An authority that found none lists none.)
        let found = policy["authorities"][0]["attestations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let counted = found.iter().filter(|a| a["counted"] == true).count();
        assert_eq!(counted, usize::from(admitted), "{row}: {policy:#}");
        if matches!(case, Missing) {
            assert!(found.is_empty(), "{row}: {policy:#}");
        } else {
            assert_eq!(found.len(), 1, "{row}: {policy:#}");
        }
    }
    // The table, for the log of a run: row, cosign's decision, registryx-guard's.
    for (row, cosign, guard) in &table {
        println!("{row:<32} cosign {cosign:<5} registryx-guard {guard}");
    }
}

/// The same agreement where the authority requires a transparency-log entry, for legacy `.att`
/// attestations: cosign checks the entry of the `dev.sigstore.cosign/bundle` annotation offline
/// against the Rekor key in `SIGSTORE_REKOR_PUBLIC_KEY` (the tests' log), as registryx-guard does
/// against the policy's `rekorKey`. Without an entry cosign would search the log online: it is pointed
/// at a closed port, so that it refuses at once.
#[tokio::test]
async fn with_a_required_log_registryx_guard_decides_as_cosign_verify_attestation() {
    use super::attestation_log::{Attested, Signer};
    use crate::support::rekor::{Entry, now};

    #[derive(Clone, Copy, Debug)]
    enum Logged {
        Yes,
        No,
        /// The entry's integrated time changed after the log signed it.
        Tampered,
    }
    let rows = [
        (Authority::Key, Logged::Yes, true),
        (Authority::Key, Logged::No, false),
        (Authority::Key, Logged::Tampered, false),
        (Authority::Keyless, Logged::Yes, true),
        (Authority::Keyless, Logged::No, false),
        (Authority::Keyless, Logged::Tampered, false),
    ];
    for (i, (authority, logged, admitted)) in rows.into_iter().enumerate() {
        let signer = match authority {
            Authority::Key => Signer::key(),
            Authority::Keyless => Signer::keyless(),
        };
        let attested = Attested::new(signer, Format::Legacy, &format!("parity-log-{i}")).await;
        let entry = attested.entry(now() - 30).await;
        match logged {
            Logged::Yes => attested.attach_logged(&entry).await,
            Logged::No => {}
            Logged::Tampered => {
                let set = attested.rekor.sign(&entry);
                let changed = Entry {
                    integrated_time: entry.integrated_time - 1,
                    ..entry.clone()
                };
                attested.attach(&changed.bundle(&set), json!(null)).await;
            }
        }
        let reference = attested.image.by_digest();
        let dir = tempfile::tempdir().unwrap();
        let rekor_key = attested.rekor.write_public_key(dir.path());
        let mut command = match &attested.signer {
            Signer::Key(cosign) => {
                let mut command = cosign.command();
                command
                    .arg("verify-attestation")
                    .arg("--key")
                    .arg(cosign.public_key());
                command
            }
            Signer::Keyless { leaf, .. } => {
                let mut command = leaf.command();
                command
                    .arg("verify-attestation")
                    .arg("--ca-roots")
                    .arg(leaf.root_path())
                    .args(["--certificate-identity", SUBJECT])
                    .args(["--certificate-oidc-issuer", ISSUER])
                    .arg("--insecure-ignore-sct=true");
                command
            }
        };
        let cosign = command
            .env("SIGSTORE_REKOR_PUBLIC_KEY", &rekor_key)
            .args(["--type", "slsaprovenance1", "--new-bundle-format=false"])
            .args(["--rekor-url", "http://127.0.0.1:9"])
            .arg(&reference)
            .output()
            .expect("run cosign verify-attestation");
        let policy = attested
            .signer
            .policy(&attested.registry.host, &attested.rekor);
        let guard = guard_verify(&policy, &reference);
        let row = format!("{authority:?} logged {logged:?}");
        assert_eq!(
            (cosign.status.success(), guard.status.success()),
            (admitted, admitted),
            "{row}: expected admitted={admitted}\ncosign verify-attestation:\n{}\n\
             registryx-guard verify:\n{}",
            text(&cosign),
            text(&guard)
        );
        if !admitted {
            let json: serde_json::Value = serde_json::from_slice(&guard.stdout).unwrap();
            let found = &json["policies"][0]["authorities"][0]["attestations"][0];
            assert_eq!(found["reasonKind"], "transparency_log", "{row}: {json:#}");
        }
    }
}
