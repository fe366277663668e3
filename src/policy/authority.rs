//! Authorities compiled from a policy: keys parsed, certificates decoded, identities' regular expressions
//! built, once, when the policy is loaded, so that admission only runs checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use regex::Regex;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use sigstore::crypto::CosignVerificationKey;
use sigstore::trust::TrustRoot as _;
use x509_cert::Certificate;
use x509_cert::der::{Decode as _, Encode as _};

use crate::policy::{Authority, Identity, KeyAuthority, TrustRoot};

/// Where a policy's Secrets (and ConfigMaps of Rego modules) are read from: the cluster for the server,
/// nothing for the command line.
pub trait SecretSource: Send + Sync {
    /// The value of `key` in Secret `namespace/name`; `Err` with a message when it cannot be read.
    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String>;

    /// Every key of ConfigMap `namespace/name`.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        Err(format!(
            "ConfigMap {namespace}/{name} cannot be read without a cluster; give the Rego modules inline"
        ))
    }

    /// The value of `key` in ConfigMap `namespace/name`.
    fn config_map_value(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
        self.config_map(namespace, name)?
            .remove(key)
            .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no key {key:?}"))
    }
}

/// For `verify` and `--policy-dir`: there is no cluster to read Secrets from.
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret_value(&self, namespace: &str, name: &str, _key: &str) -> Result<Vec<u8>, String> {
        Err(format!(
            "Secret {namespace}/{name} cannot be read without a cluster; give the key inline with key.data"
        ))
    }
}

/// An authority ready to check signatures.
#[derive(Clone)]
pub struct CompiledAuthority {
    pub name: String,
    pub trust: Trust,
    pub tlog_required: bool,
    /// Rekor public keys by log ID (hex SHA-256 of the key's DER), for offline entry checks.
    pub rekor_keys: Arc<BTreeMap<String, CosignVerificationKey>>,
    /// Predicate type URIs of the attestations this authority must have signed for the digest.
    pub attestations: Vec<String>,
    /// Hash of everything that decides this authority's verdicts: the cache key of its results.
    pub fingerprint: String,
}

/// cosign's `attest --type` short names and the predicate types it writes for them (cosign v3,
/// `pkg/cosign/attestation`).
pub const PREDICATE_TYPES: [(&str, &str); 10] = [
    ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance02", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
    ("link", "https://in-toto.io/Link/v1"),
    ("spdx", "https://spdx.dev/Document"),
    ("spdxjson", "https://spdx.dev/Document"),
    ("cyclonedx", "https://cyclonedx.org/bom"),
    ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
    ("openvex", "https://openvex.dev/ns"),
    ("custom", "https://cosign.sigstore.dev/attestation/v1"),
];

/// The predicate type URI of an `attestations[].type`: a short name of `cosign attest --type`, or a
/// URI as given.
pub fn predicate_type(kind: &str) -> Result<String, String> {
    if let Some((_, uri)) = PREDICATE_TYPES.iter().find(|(name, _)| *name == kind) {
        return Ok((*uri).to_owned());
    }
    if kind == "https://sigstore.dev/cosign/sign/v1" {
        return Err(
            "that is the predicate type of cosign's bundle signatures, and a signature is never an \
             attestation: the authority verifies the signature anyway"
                .to_owned(),
        );
    }
    if kind.contains("://") && !kind.chars().any(char::is_whitespace) {
        return Ok(kind.to_owned());
    }
    Err(format!(
        "{kind:?} is neither a cosign attest --type name ({}) nor a predicate type URI",
        PREDICATE_TYPES.map(|(name, _)| name).join(", ")
    ))
}

impl std::fmt::Debug for CompiledAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledAuthority")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub enum Trust {
    Key {
        key: Arc<CosignVerificationKey>,
        /// `sha256:<hex>` of the key's DER SubjectPublicKeyInfo.
        key_id: String,
    },
    Keyless {
        identities: Arc<Vec<IdentityMatcher>>,
        anchors: Arc<Vec<CertificateDer<'static>>>,
        intermediates: Arc<Vec<CertificateDer<'static>>>,
        /// Whether, and against which CT logs, the certificate's embedded SCTs are checked.
        sct: SctCheck,
    },
}

/// Certificate transparency for a keyless authority: whether the signing certificate's embedded SCTs
/// are checked, and against which CT log keys.
#[derive(Clone)]
pub enum SctCheck {
    /// An embedded SCT must verify with one of these logs' keys, by log ID (hex SHA-256 of the key's
    /// DER SubjectPublicKeyInfo, RFC 6962's `LogID`).
    Required(Arc<BTreeMap<String, CtLogKey>>),
    /// The policy turned the check off (`keyless.ctLog.required: false`).
    Off,
    /// The trust root names no CT log key, so there is nothing to check against.
    NoKey,
}

/// A CT log's key and when it signed: a trusted root keeps a retired log (with the end of its
/// validity), whose SCTs stay good for the certificates it logged while it was in service.
#[derive(Clone)]
pub struct CtLogKey {
    pub key: CosignVerificationKey,
    /// Unix milliseconds, as SCT timestamps are; `None`: unbounded (a `ctLogKey` PEM).
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
}

impl SctCheck {
    fn fingerprint(&self) -> &'static [u8] {
        match self {
            SctCheck::Required(_) => b"sct-required",
            SctCheck::Off => b"sct-off",
            SctCheck::NoKey => b"sct-no-key",
        }
    }
}

impl CompiledAuthority {
    /// What this authority does not check that it could, for the policy's Ready message.
    pub fn caveat(&self) -> Option<String> {
        let why = match &self.trust {
            Trust::Keyless {
                sct: SctCheck::Off, ..
            } => "keyless.ctLog.required: false",
            Trust::Keyless {
                sct: SctCheck::NoKey,
                ..
            } => "no CT log key: trustRoot.ctLogKey, or ctlogs in trustRoot.trustedRootJSON",
            _ => return None,
        };
        Some(format!(
            "authority {:?}: embedded SCTs are not checked ({why})",
            self.name
        ))
    }
}

/// One accepted signer identity.
#[derive(Clone, Debug)]
pub struct IdentityMatcher {
    pub issuer: StringMatch,
    pub subject: StringMatch,
}

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(expected) => expected == value,
            StringMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StringMatch::Exact(value) => write!(f, "{value:?}"),
            StringMatch::Regex(regex) => write!(f, "/{}/", regex.as_str()),
        }
    }
}

/// Why an authority does not compile; the message names the authority and the field.
#[derive(Debug, thiserror::Error)]
#[error("authority {authority:?}: {reason}")]
pub struct AuthorityError {
    pub authority: String,
    pub reason: String,
}

/// Compiles one authority of a policy.
pub fn compile(
    authority: &Authority,
    secrets: &dyn SecretSource,
    default_namespace: &str,
) -> Result<CompiledAuthority, AuthorityError> {
    let fail = |reason: String| AuthorityError {
        authority: authority.name.clone(),
        reason,
    };
    let mut material = Sha256::new();
    material.update(authority.name.as_bytes());
    let (trust, mut rekor_keys, default_tlog) = match (&authority.key, &authority.keyless) {
        (Some(key), None) => {
            let pem = key_pem(key, secrets, default_namespace).map_err(&fail)?;
            let der = pem_to_der(&pem, "PUBLIC KEY").map_err(|e| fail(format!("key: {e}")))?;
            let verification_key = CosignVerificationKey::try_from_der(&der)
                .map_err(|e| fail(format!("key: unsupported or malformed public key: {e}")))?;
            material.update(b"key");
            material.update(&der);
            let key_id = format!("sha256:{}", hex::encode(Sha256::digest(&der)));
            (
                Trust::Key {
                    key: Arc::new(verification_key),
                    key_id,
                },
                BTreeMap::new(),
                false,
            )
        }
        (None, Some(keyless)) => {
            if keyless.identities.is_empty() {
                return Err(fail(
                    "keyless.identities is empty: name at least one issuer and subject".into(),
                ));
            }
            let identities = keyless
                .identities
                .iter()
                .map(compile_identity)
                .collect::<Result<Vec<_>, _>>()
                .map_err(&fail)?;
            let root = compile_trust_root(&keyless.trust_root, secrets, default_namespace)
                .map_err(&fail)?;
            let rekor = root.rekor_keys;
            let sct = match (keyless.ct_log.as_ref().map(|c| c.required), root.ct_logs) {
                (Some(false), _) => SctCheck::Off,
                (Some(true), ct_logs) if ct_logs.is_empty() => {
                    return Err(fail(
                        "an embedded SCT is required but no CT log key is configured (set \
                         trustRoot.ctLogKey, the ctlogs of trustRoot.trustedRootJSON, or \
                         keyless.ctLog.required: false)"
                            .into(),
                    ));
                }
                (None, ct_logs) if ct_logs.is_empty() => SctCheck::NoKey,
                (_, ct_logs) => SctCheck::Required(Arc::new(ct_logs)),
            };
            material.update(b"keyless");
            for identity in &keyless.identities {
                material.update(serde_json::to_vec(identity).unwrap_or_default());
            }
            material.update(serde_json::to_vec(&keyless.trust_root).unwrap_or_default());
            // A referenced trust root is its content: a replaced ConfigMap is another trust.
            material.update(root.referenced.as_bytes());
            material.update(sct.fingerprint());
            let trust = Trust::Keyless {
                identities: Arc::new(identities),
                anchors: Arc::new(root.anchors),
                intermediates: Arc::new(root.intermediates),
                sct,
            };
            (trust, rekor, true)
        }
        _ => return Err(fail("needs exactly one of key or keyless".into())),
    };
    let tlog = authority.transparency_log.as_ref();
    if let Some(pem) = tlog.and_then(|t| t.rekor_key.as_deref()) {
        let (log_id, key) =
            log_key(pem).map_err(|e| fail(format!("transparencyLog.rekorKey: {e}")))?;
        material.update(pem.as_bytes());
        rekor_keys.insert(log_id, key);
    }
    let tlog_required = tlog.map(|t| t.required).unwrap_or(default_tlog);
    if tlog_required && rekor_keys.is_empty() {
        return Err(fail(
            "a transparency-log entry is required but no Rekor key is configured (set trustRoot.rekorKey, transparencyLog.rekorKey, \
             or transparencyLog.required: false)"
                .into(),
        ));
    }
    material.update([u8::from(tlog_required)]);
    let mut attestations = Vec::new();
    for (i, required) in authority.attestations.iter().enumerate() {
        let uri = predicate_type(&required.kind)
            .map_err(|e| fail(format!("attestations[{i}].type: {e}")))?;
        if !attestations.contains(&uri) {
            attestations.push(uri);
        }
    }
    for uri in &attestations {
        material.update(b"attestation");
        material.update(uri.as_bytes());
    }
    Ok(CompiledAuthority {
        name: authority.name.clone(),
        trust,
        tlog_required,
        rekor_keys: Arc::new(rekor_keys),
        attestations,
        fingerprint: hex::encode(material.finalize()),
    })
}

fn key_pem(
    key: &KeyAuthority,
    secrets: &dyn SecretSource,
    default_namespace: &str,
) -> Result<String, String> {
    match (&key.data, &key.secret_ref) {
        (Some(data), None) => Ok(data.clone()),
        (None, Some(secret)) => {
            let namespace = secret.namespace.as_deref().unwrap_or(default_namespace);
            let entry = secret.key.as_deref().unwrap_or("cosign.pub");
            let bytes = secrets.secret_value(namespace, &secret.name, entry)?;
            String::from_utf8(bytes).map_err(|_| {
                format!(
                    "Secret {namespace}/{} key {entry} is not PEM text",
                    secret.name
                )
            })
        }
        _ => Err("key needs exactly one of data or secretRef".into()),
    }
}

fn compile_identity(identity: &Identity) -> Result<IdentityMatcher, String> {
    let pick = |exact: &Option<String>,
                pattern: &Option<String>,
                field: &str|
     -> Result<StringMatch, String> {
        match (exact, pattern) {
            (Some(value), None) => Ok(StringMatch::Exact(value.clone())),
            (None, Some(pattern)) => Regex::new(pattern)
                .map(StringMatch::Regex)
                .map_err(|e| format!("{field}RegExp {pattern:?} does not compile: {e}")),
            _ => Err(format!(
                "an identity needs exactly one of {field} or {field}RegExp"
            )),
        }
    };
    Ok(IdentityMatcher {
        issuer: pick(&identity.issuer, &identity.issuer_reg_exp, "issuer")?,
        subject: pick(&identity.subject, &identity.subject_reg_exp, "subject")?,
    })
}

/// A keyless trust root, parsed.
struct RootMaterial {
    anchors: Vec<CertificateDer<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    /// Rekor keys by log ID.
    rekor_keys: BTreeMap<String, CosignVerificationKey>,
    /// CT log keys by log ID.
    ct_logs: BTreeMap<String, CtLogKey>,
    /// The `trusted_root.json` read through `configMapRef` (empty without one): part of the fingerprint.
    referenced: String,
}

fn compile_trust_root(
    root: &TrustRoot,
    secrets: &dyn SecretSource,
    default_namespace: &str,
) -> Result<RootMaterial, String> {
    let mut certificates = Vec::new();
    let mut rekor_keys = BTreeMap::new();
    let mut ct_logs = BTreeMap::new();
    let referenced = match &root.config_map_ref {
        Some(reference) => {
            let namespace = reference.namespace.as_deref().unwrap_or(default_namespace);
            let key = reference.key.as_deref().unwrap_or("trusted_root.json");
            secrets
                .config_map_value(namespace, &reference.name, key)
                .map_err(|e| format!("trustRoot.configMapRef: {e}"))?
        }
        None => String::new(),
    };
    let json = match (&root.trusted_root_json, &root.config_map_ref) {
        (Some(json), None) => Some(json.as_str()),
        (None, Some(_)) => Some(referenced.as_str()),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err("trustRoot needs one of trustedRootJSON or configMapRef, not both".into());
        }
    };
    if let Some(json) = json {
        let field = if root.config_map_ref.is_some() {
            "trustRoot.configMapRef's trusted_root.json"
        } else {
            "trustRoot.trustedRootJSON"
        };
        let parsed =
            sigstore::trust::sigstore::SigstoreTrustRoot::from_trusted_root_json_unchecked(
                json.as_bytes(),
            )
            .map_err(|e| format!("{field} does not parse: {e}"))?;
        for certificate in parsed.fulcio_certs().map_err(|e| format!("{field}: {e}"))? {
            certificates.push(certificate.into_owned());
        }
        for (log_id, der) in parsed.rekor_keys().map_err(|e| format!("{field}: {e}"))? {
            let key = CosignVerificationKey::try_from_der(der)
                .map_err(|e| format!("{field}: Rekor key {log_id}: {e}"))?;
            rekor_keys.insert(log_id, key);
        }
        ct_logs = trusted_root_ct_logs(json).map_err(|e| format!("{field}: ctlogs: {e}"))?;
    }
    if let Some(pem) = &root.fulcio_ca {
        let chain = Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|e| format!("trustRoot.fulcioCA does not parse as PEM certificates: {e}"))?;
        for certificate in chain {
            let der = certificate
                .to_der()
                .map_err(|e| format!("trustRoot.fulcioCA: {e}"))?;
            certificates.push(CertificateDer::from(der));
        }
    }
    if let Some(pem) = &root.rekor_key {
        let (log_id, key) = log_key(pem).map_err(|e| format!("trustRoot.rekorKey: {e}"))?;
        rekor_keys.insert(log_id, key);
    }
    if let Some(pem) = &root.ct_log_key {
        let (log_id, key) = log_key(pem).map_err(|e| format!("trustRoot.ctLogKey: {e}"))?;
        let unbounded = CtLogKey {
            key,
            valid_from: None,
            valid_until: None,
        };
        ct_logs.insert(log_id, unbounded);
    }
    if certificates.is_empty() {
        return Err("trustRoot holds no CA certificate".into());
    }
    // Self-signed certificates anchor the chain; the others may only appear as intermediates.
    let (mut anchors, mut intermediates) = (Vec::new(), Vec::new());
    for der in certificates {
        let certificate = Certificate::from_der(der.as_ref())
            .map_err(|e| format!("trustRoot: a CA certificate does not parse: {e}"))?;
        if certificate.tbs_certificate().issuer() == certificate.tbs_certificate().subject() {
            anchors.push(der);
        } else {
            intermediates.push(der);
        }
    }
    if anchors.is_empty() {
        return Err("trustRoot holds no self-signed root certificate".into());
    }
    Ok(RootMaterial {
        anchors,
        intermediates,
        rekor_keys,
        ct_logs,
        referenced,
    })
}

/// The CT logs of a sigstore `trusted_root.json`, retired ones included with their validity (sigstore-rs
/// hands out only the logs valid now, which would refuse every certificate a retired log logged).
fn trusted_root_ct_logs(json: &str) -> Result<BTreeMap<String, CtLogKey>, String> {
    #[derive(serde::Deserialize)]
    struct Root {
        #[serde(default)]
        ctlogs: Vec<Log>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Log {
        public_key: PublicKey,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PublicKey {
        raw_bytes: String,
        valid_for: Option<Validity>,
    }
    #[derive(serde::Deserialize)]
    struct Validity {
        start: Option<String>,
        end: Option<String>,
    }
    let millis = |time: &Option<String>| -> Result<Option<i64>, String> {
        time.as_deref()
            .map(|t| {
                t.parse::<k8s_openapi::jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .map_err(|e| format!("validFor time {t:?}: {e}"))
            })
            .transpose()
    };
    let root: Root = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut logs = BTreeMap::new();
    for log in root.ctlogs {
        let der = base64::engine::general_purpose::STANDARD
            .decode(&log.public_key.raw_bytes)
            .map_err(|_| "a publicKey.rawBytes is not base64".to_owned())?;
        let key = CosignVerificationKey::try_from_der(&der)
            .map_err(|e| format!("unsupported or malformed public key: {e}"))?;
        let validity = log.public_key.valid_for;
        let (valid_from, valid_until) = match &validity {
            Some(v) => (millis(&v.start)?, millis(&v.end)?),
            None => (None, None),
        };
        // RFC 6962's log ID, whatever the file's logId says: an SCT names its log by this hash.
        logs.insert(
            hex::encode(Sha256::digest(&der)),
            CtLogKey {
                key,
                valid_from,
                valid_until,
            },
        );
    }
    Ok(logs)
}

/// A transparency log's key (Rekor's or a CT log's) and its log ID: the hex SHA-256 of its DER
/// SubjectPublicKeyInfo, as Rekor entries' `logID` and RFC 6962 SCTs' `LogID` name it.
fn log_key(pem: &str) -> Result<(String, CosignVerificationKey), String> {
    let der = pem_to_der(pem, "PUBLIC KEY")?;
    let key = CosignVerificationKey::try_from_der(&der)
        .map_err(|e| format!("unsupported or malformed public key: {e}"))?;
    Ok((hex::encode(Sha256::digest(&der)), key))
}

/// The DER content of the first PEM block labelled `label`.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| format!("no {begin} block"))?;
    let (found, der) = x509_cert::der::pem::decode_vec(&pem.as_bytes()[start..])
        .map_err(|e| format!("PEM does not decode: {e}"))?;
    if found != label {
        return Err(format!("expected a {label} PEM block, found {found}"));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{SecretKeyRef, TransparencyLog};

    const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2jhYP5wNM/5o46Yjh3zE4IXzSZfr\nRIZ5GBFkaA9TKSt1iFTmS8qLUIaJXNAkpxWTFHxMEUnAeDcQ6w4BW6jHzw==\n-----END PUBLIC KEY-----\n";

    fn key_authority(data: &str) -> Authority {
        Authority {
            name: "release".into(),
            key: Some(KeyAuthority {
                data: Some(data.into()),
                secret_ref: None,
            }),
            keyless: None,
            transparency_log: None,
            attestations: Vec::new(),
        }
    }

    #[test]
    fn attestation_types_are_cosign_names_or_uris_and_change_the_fingerprint() {
        assert_eq!(
            predicate_type("slsaprovenance1").unwrap(),
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            predicate_type("https://example.com/p/v1").unwrap(),
            "https://example.com/p/v1"
        );
        assert!(predicate_type("slsa").is_err());
        assert!(predicate_type("https://sigstore.dev/cosign/sign/v1").is_err());
        let plain = compile(&key_authority(P256), &NoSecrets, "ns").unwrap();
        let mut with = key_authority(P256);
        with.attestations = vec![crate::policy::AttestationRequirement {
            kind: "vuln".into(),
        }];
        let with = compile(&with, &NoSecrets, "ns").unwrap();
        assert_eq!(
            with.attestations,
            ["https://cosign.sigstore.dev/attestation/vuln/v1"]
        );
        assert_ne!(plain.fingerprint, with.fingerprint);
        with_bad_type();
    }

    fn with_bad_type() {
        let mut bad = key_authority(P256);
        bad.attestations = vec![crate::policy::AttestationRequirement {
            kind: "sbom".into(),
        }];
        let error = compile(&bad, &NoSecrets, "ns").unwrap_err().to_string();
        assert!(error.contains("attestations[0].type"), "{error}");
    }

    #[test]
    fn compiles_a_pem_key_with_its_key_id() {
        let compiled = compile(&key_authority(P256), &NoSecrets, "ns").unwrap();
        let Trust::Key { key_id, .. } = &compiled.trust else {
            panic!()
        };
        assert!(key_id.starts_with("sha256:") && key_id.len() == 71);
        assert!(
            !compiled.tlog_required,
            "keys do not require a transparency log by default"
        );
    }

    #[test]
    fn a_broken_key_is_named_in_the_error() {
        let error = compile(
            &key_authority("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n"),
            &NoSecrets,
            "ns",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("authority \"release\"") && error.contains("key:"),
            "{error}"
        );
        let error = compile(&key_authority("hello"), &NoSecrets, "ns")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no -----BEGIN PUBLIC KEY----- block"),
            "{error}"
        );
    }

    #[test]
    fn secret_refs_need_a_cluster() {
        let mut authority = key_authority(P256);
        authority.key = Some(KeyAuthority {
            data: None,
            secret_ref: Some(SecretKeyRef {
                name: "keys".into(),
                namespace: None,
                key: None,
            }),
        });
        let error = compile(&authority, &NoSecrets, "guard")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("Secret guard/keys cannot be read without a cluster"),
            "{error}"
        );
    }

    #[test]
    fn required_tlog_without_a_rekor_key_is_refused() {
        let mut authority = key_authority(P256);
        authority.transparency_log = Some(TransparencyLog {
            required: true,
            rekor_key: None,
        });
        let error = compile(&authority, &NoSecrets, "ns")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no Rekor key is configured"), "{error}");
    }

    #[test]
    fn fingerprints_change_with_the_trust_material() {
        let a = compile(&key_authority(P256), &NoSecrets, "ns").unwrap();
        let mut other = key_authority(P256);
        other.name = "other".into();
        let b = compile(&other, &NoSecrets, "ns").unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(
            a.fingerprint,
            compile(&key_authority(P256), &NoSecrets, "ns")
                .unwrap()
                .fingerprint
        );
    }

    /// A retired CT log stays, with its validity, so that the certificates it logged still verify; its
    /// log ID is RFC 6962's, whatever the file names.
    #[test]
    fn a_trusted_roots_ct_logs_include_retired_ones_with_their_validity() {
        let der = pem_to_der(P256, "PUBLIC KEY").unwrap();
        let json = serde_json::json!({"ctlogs": [{
            "publicKey": {
                "rawBytes": base64::engine::general_purpose::STANDARD.encode(&der),
                "validFor": {"start": "2021-03-14T00:00:00Z", "end": "2022-10-31T23:59:59.999Z"},
            },
            "logId": {"keyId": "AAAA"},
        }]});
        let logs = trusted_root_ct_logs(&json.to_string()).unwrap();
        let log = &logs[&hex::encode(Sha256::digest(&der))];
        assert_eq!(
            (log.valid_from, log.valid_until),
            (Some(1_615_680_000_000), Some(1_667_260_799_999))
        );
    }

    #[test]
    fn identity_regexes_are_checked() {
        let error = compile_identity(&Identity {
            issuer: Some("https://issuer".into()),
            issuer_reg_exp: None,
            subject: None,
            subject_reg_exp: Some("([unclosed".into()),
        })
        .unwrap_err();
        assert!(
            error.contains("subjectRegExp \"([unclosed\" does not compile"),
            "{error}"
        );
    }
}
