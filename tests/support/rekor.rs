//! A test Rekor: the tests act as the transparency log with a key of their own (ECDSA P-256, like
//! Rekor's) that signs entry timestamps (SETs) over entry bodies of real cosign signatures and
//! attestations. Entries go where cosign puts them: the `dev.sigstore.cosign/bundle` annotation of a
//! `.sig` or `.att` layer ([`Entry::bundle`]), or a sigstore bundle's `tlogEntries`
//! ([`TestRekor::bundle_entry`]). A policy trusts the log through its public key; the log ID an entry
//! names is the hex SHA-256 of that key's DER SubjectPublicKeyInfo.

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SigningKey as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::verdicts::{base64_decode, base64_encode};

/// The DER SubjectPublicKeyInfo of a P-256 key up to its 65-byte uncompressed point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, no unused bits) }.
const P256_SPKI_HEADER: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

/// A test Rekor: nothing but the key that signs entry timestamps.
pub struct TestRekor {
    key: KeyPair,
}

impl TestRekor {
    pub fn new() -> TestRekor {
        TestRekor {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key"),
        }
    }

    /// The DER SubjectPublicKeyInfo: the fixed P-256 header and the uncompressed point.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = hex::decode(P256_SPKI_HEADER).unwrap();
        der.extend_from_slice(self.key.public_key_raw());
        assert_eq!(der, self.key.subject_public_key_info(), "not a P-256 SPKI");
        der
    }

    /// What a policy puts in `rekorKey`.
    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// `trusted_root` (a sigstore `trusted_root.json`) with this log as its one transparency log
    /// (`tlogs`).
    pub fn trusted_by(&self, mut trusted_root: Value) -> Value {
        use base64::Engine as _;
        let base64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        trusted_root["tlogs"] = json!([{
            "baseUrl": "https://rekor.registryx-guard.test",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": base64(&self.spki_der()),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            },
            "logId": {"keyId": base64(&Sha256::digest(self.spki_der()))},
        }]);
        trusted_root
    }

    /// What entries of this log name as their `logID`.
    pub fn log_id(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }

    /// An entry of this log for `body`, integrated at `integrated_time`.
    pub fn entry(&self, body: String, integrated_time: i64) -> Entry {
        Entry {
            body,
            integrated_time,
            log_id: self.log_id(),
            log_index: 4242,
        }
    }

    /// The signed entry timestamp of `entry`, base64: an ASN.1 DER ECDSA signature over its canonical
    /// form.
    pub fn sign(&self, entry: &Entry) -> String {
        base64_encode(&self.key.sign(entry.canonical().as_bytes()).unwrap())
    }

    /// `entry` with a timestamp signed by this log: the `dev.sigstore.cosign/bundle` annotation.
    pub fn bundle(&self, entry: &Entry) -> String {
        entry.bundle(&self.sign(entry))
    }
}

/// What a Rekor signed entry timestamp covers.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The base64 entry body.
    pub body: String,
    pub integrated_time: i64,
    /// Hex SHA-256 of the log's key.
    pub log_id: String,
    pub log_index: i64,
}

impl Entry {
    /// RFC 8785 canonical JSON: no white space, members sorted by UTF-16 code units (so `logID` comes
    /// before `logIndex`). Written out by hand so that the test does not share the engine's
    /// canonicalizer.
    pub fn canonical(&self) -> String {
        format!(
            r#"{{"body":{},"integratedTime":{},"logID":{},"logIndex":{}}}"#,
            json!(self.body),
            self.integrated_time,
            json!(self.log_id),
            self.log_index
        )
    }

    /// The annotation cosign writes: `{"SignedEntryTimestamp": …, "Payload": {…}}`, the payload's
    /// members in cosign's (not canonical) order.
    pub fn bundle(&self, set: &str) -> String {
        format!(
            r#"{{"SignedEntryTimestamp":{},"Payload":{{"body":{},"integratedTime":{},"logIndex":{},"logID":{}}}}}"#,
            json!(set),
            json!(self.body),
            self.integrated_time,
            self.log_index,
            json!(self.log_id)
        )
    }
}

/// A hashedrekord v0.0.1 entry body, base64: `signature` (base64) of the payload whose SHA-256 is
/// `payload_sha256` (hex), made with the key or certificate `public_key_pem`.
pub fn hashedrekord(payload_sha256: &str, signature: &str, public_key_pem: &str) -> String {
    let body = json!({
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": payload_sha256}},
            "signature": {
                "content": signature,
                "publicKey": {"content": base64_encode(public_key_pem.as_bytes())},
            },
        },
    });
    base64_encode(body.to_string().as_bytes())
}

pub fn now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_secs()).unwrap()
}

/// A dsse v0.0.1 entry body, base64, as Rekor canonicalizes what cosign (v2.4 on) logs for an
/// attestation: the envelope's and the payload's SHA-256 (hex), and its signature (base64) with the
/// key or certificate `verifier_pem` that made it.
pub fn dsse(envelope: &[u8], payload: &[u8], signature: &str, verifier_pem: &str) -> String {
    let body = json!({
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(envelope))},
            "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))},
            "signatures": [{
                "signature": signature,
                "verifier": base64_encode(verifier_pem.as_bytes()),
            }],
        },
    });
    base64_encode(body.to_string().as_bytes())
}

/// An intoto v0.0.1 entry body, base64, as cosign before v2.4 logged attestations: the SHA-256 of the
/// envelope as stored and of its payload, and the key or certificate; no signature.
pub fn intoto(envelope: &[u8], payload: &[u8], public_key_pem: &str) -> String {
    let body = json!({
        "apiVersion": "0.0.1",
        "kind": "intoto",
        "spec": {
            "content": {
                "hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(envelope))},
                "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))},
            },
            "publicKey": base64_encode(public_key_pem.as_bytes()),
        },
    });
    base64_encode(body.to_string().as_bytes())
}

/// A DSSE envelope as cosign stores it (an `.att` layer, a bundle's `dsseEnvelope`): its JSON's
/// decoded payload and its first signature (base64).
pub fn envelope_parts(envelope: &Value) -> (Vec<u8>, String) {
    let payload = base64_decode(envelope["payload"].as_str().expect("envelope payload"));
    let signature = envelope["signatures"][0]["sig"]
        .as_str()
        .unwrap_or_else(|| panic!("no signature in {envelope}"))
        .to_owned();
    (payload, signature)
}

impl TestRekor {
    /// `entry` as a sigstore bundle's `verificationMaterial.tlogEntries` item, with this log's signed
    /// entry timestamp as its inclusion promise (what cosign checks offline).
    pub fn bundle_entry(&self, entry: &Entry, kind: &str) -> Value {
        json!({
            "logIndex": entry.log_index.to_string(),
            "logId": {"keyId": base64_encode(&hex::decode(&entry.log_id).unwrap())},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": entry.integrated_time.to_string(),
            "inclusionPromise": {"signedEntryTimestamp": self.sign(entry)},
            "canonicalizedBody": entry.body,
        })
    }

    /// The key as a file for cosign's `SIGSTORE_REKOR_PUBLIC_KEY`.
    pub fn write_public_key(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("rekor.pub");
        std::fs::write(&path, self.public_key_pem()).unwrap();
        path
    }
}
