//! The cryptographic check of one signature against one authority. Nothing here touches the network:
//! signatures, certificates and transparency-log entries are all checked offline.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature};
use x509_cert::Certificate;
use x509_cert::der::{Decode as _, Encode as _, asn1::Utf8StringRef};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::bundle::{Bundle, Envelope, TlogEntry};
use super::signatures::{BundleSignature, FoundSignature, LegacyAttestation, LegacySignature};
use crate::policy::authority::{CompiledAuthority, SctCheck, Trust};
use crate::refusal::Failure;

const COSIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
/// Code signing, 1.3.6.1.5.5.7.3.3, as DER OID content bytes.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_SAN: &str = "2.5.29.17";

/// What a verified signature proves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub format: &'static str,
    /// The `.sig` layer or the referrer manifest that held the signature.
    pub signature_digest: String,
    pub key_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub rekor_integrated_time: Option<i64>,
}

/// Checks `signature` against `authority` for the image `digest`; `Err` says why it does not verify.
pub fn check(
    authority: &CompiledAuthority,
    digest: &str,
    signature: &FoundSignature,
) -> Result<Proof, Failure> {
    match signature {
        FoundSignature::Legacy(legacy) => check_legacy(authority, digest, legacy),
        FoundSignature::Bundle(bundle) => check_bundle(authority, digest, bundle),
    }
}

fn check_legacy(
    authority: &CompiledAuthority,
    digest: &str,
    signature: &LegacySignature,
) -> Result<Proof, Failure> {
    let mut proof = Proof {
        format: "legacy",
        signature_digest: signature.layer_digest.clone(),
        ..Proof::default()
    };
    let raw_signature = STANDARD
        .decode(signature.signature.trim())
        .map_err(|_| Failure::unreadable("the signature annotation is not base64"))?;

    let leaf = signature.certificate.as_deref().and_then(leaf_der);
    let signers = signer_hashes(authority, leaf.as_deref());
    let logged = Logged {
        payload: &signature.payload,
        signatures: vec![signature.signature.as_str()],
        envelope: None,
    };
    let integrated_time = legacy_log_entry(
        authority,
        signature.rekor_bundle.as_deref(),
        &logged,
        &signers,
        "signature",
    )?;
    proof.rekor_integrated_time = integrated_time;

    let key = signing_key(
        authority,
        signature.certificate.as_deref().map(Material::Pem),
        signature.chain.as_deref(),
        integrated_time,
        &mut proof,
    )?;
    key.verify_signature(Signature::Raw(&raw_signature), &signature.payload)
        .map_err(|_| Failure::other_signer(describe_key_mismatch(authority, &proof)))?;

    #[derive(Deserialize)]
    struct SimpleSigning {
        critical: Critical,
    }
    #[derive(Deserialize)]
    struct Critical {
        image: Image,
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let payload: SimpleSigning = serde_json::from_slice(&signature.payload).map_err(|e| {
        Failure::unreadable(format!(
            "the signed payload, read as a cosign simple-signing document, {}",
            crate::untrusted::json_error(&e)
        ))
    })?;
    if payload.critical.kind != "cosign container image signature" {
        return Err(Failure::unreadable(format!(
            "the signed payload has type {}, not a cosign container image signature",
            crate::untrusted::quote(&payload.critical.kind)
        )));
    }
    if payload.critical.image.digest != digest {
        return Err(Failure::other_digest(format!(
            "the signature is for {}, not for this image's {digest} (a signature copied from another image, or the tag moved after signing)",
            shown_digest(&payload.critical.image.digest)
        )));
    }
    Ok(proof)
}

fn check_bundle(
    authority: &CompiledAuthority,
    digest: &str,
    signature: &BundleSignature,
) -> Result<Proof, Failure> {
    let mut proof = Proof {
        format: "bundle",
        signature_digest: signature.manifest_digest.clone(),
        ..Proof::default()
    };
    // An attestation (provenance, SBOM) beside the image is not a malformed signature: as far as
    // signing goes, there is none. Told by the type its statement claims, before any check: otherwise
    // an attestation that lacks a required log entry, or is another signer's, would make an unsigned
    // image's refusal read `transparency_log` or `other_signer` instead of `no_signature`.
    let not_a_signature = |kind: &str| {
        Failure::new(
            crate::refusal::Reason::NoSignature,
            format!(
                "the bundle is an attestation of type {}, not a cosign signature",
                crate::untrusted::quote(kind)
            ),
        )
    };
    if let Some(claimed) = claimed_type_of_bundle(&signature.bundle)
        && claimed != COSIGN_PREDICATE
    {
        return Err(not_a_signature(&claimed));
    }
    let statement = verify_bundle(authority, &signature.bundle, &mut proof)?;
    if statement.predicate_type != COSIGN_PREDICATE {
        return Err(not_a_signature(&statement.predicate_type));
    }
    statement.names_digest(digest, "signature")?;
    Ok(proof)
}

/// One attestation found for the digest, and what it proved to this authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// `legacy` (a layer of the `.att` tag) or `bundle` (a referrer).
    pub format: &'static str,
    /// The `.att` layer or the referrer manifest that held it.
    pub attestation_digest: String,
    /// The statement's predicate type; before verification only what it claims.
    pub predicate_type: Option<String>,
    /// Its DSSE signature verified against the authority and its subject names the digest.
    pub verified: bool,
    /// Verified, and of a type the authority requires.
    pub counted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_kind: Option<crate::refusal::Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rekor_integrated_time: Option<i64>,
    /// The verified statement's predicate (for Rego; not repeated in the evidence JSON).
    #[serde(skip)]
    pub predicate: Option<serde_json::Value>,
}

/// Checks a stored attestation (a `.att` layer or a bundle referrer) against `authority` for `digest`.
/// `None`: not an attestation at all (a bundle that holds an image signature).
pub fn check_attestation(
    authority: &CompiledAuthority,
    digest: &str,
    found: &FoundAttestation<'_>,
) -> Option<Attestation> {
    let mut proof = Proof::default();
    let (format, attestation_digest, claimed, verified) = match found {
        FoundAttestation::Bundle(bundle) => {
            let claimed = claimed_type_of_bundle(&bundle.bundle);
            if claimed.as_deref() == Some(COSIGN_PREDICATE) {
                return None;
            }
            (
                "bundle",
                bundle.manifest_digest.clone(),
                claimed,
                verify_bundle(authority, &bundle.bundle, &mut proof),
            )
        }
        FoundAttestation::Legacy(legacy) => (
            "legacy",
            legacy.layer_digest.clone(),
            claimed_type_of_envelope(&legacy.envelope),
            verify_legacy_envelope(authority, legacy, &mut proof),
        ),
    };
    let checked = verified.and_then(|statement| {
        if statement.predicate_type == COSIGN_PREDICATE {
            return Err(Failure::new(
                crate::refusal::Reason::AttestationOtherType,
                "a cosign signature, not an attestation",
            ));
        }
        statement.names_digest(digest, "attestation")?;
        Ok(statement)
    });
    let mut attestation = Attestation {
        format,
        attestation_digest,
        predicate_type: claimed,
        verified: false,
        counted: false,
        reason_kind: None,
        reason: None,
        rekor_integrated_time: proof.rekor_integrated_time,
        predicate: None,
    };
    match checked {
        Ok(statement) => {
            attestation.counted = authority.attestations.contains(&statement.predicate_type);
            attestation.verified = true;
            attestation.predicate_type = Some(statement.predicate_type);
            attestation.predicate = Some(statement.predicate);
        }
        Err(failure) => {
            use crate::refusal::Reason;
            let reason = match failure.reason {
                Reason::OtherSigner => Reason::AttestationOtherSigner,
                Reason::OtherDigest => Reason::AttestationOtherDigest,
                other => other,
            };
            attestation.reason_kind = Some(reason);
            attestation.reason = Some(failure.message);
        }
    }
    Some(attestation)
}

/// What may hold an attestation.
pub enum FoundAttestation<'a> {
    Legacy(&'a LegacyAttestation),
    Bundle(&'a BundleSignature),
}

/// The predicate type a bundle's statement claims, before anything is verified.
fn claimed_type_of_bundle(bundle: &[u8]) -> Option<String> {
    let bundle: Bundle = serde_json::from_slice(bundle).ok()?;
    claimed_type(&bundle.dsse_envelope?.payload)
}

fn claimed_type_of_envelope(envelope: &[u8]) -> Option<String> {
    let envelope: Envelope = serde_json::from_slice(envelope).ok()?;
    claimed_type(&envelope.payload)
}

fn claimed_type(payload_base64: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Claim {
        predicate_type: String,
    }
    let payload = STANDARD.decode(payload_base64).ok()?;
    let claim: Claim = serde_json::from_slice(&payload).ok()?;
    Some(crate::untrusted::excerpt(&claim.predicate_type, 200))
}

/// Verifies a `.att` layer's DSSE envelope against `authority` (its certificate or key; the
/// signature over the PAE) and returns its in-toto statement.
fn verify_legacy_envelope(
    authority: &CompiledAuthority,
    attestation: &LegacyAttestation,
    proof: &mut Proof,
) -> Result<Statement, Failure> {
    let envelope: Envelope = serde_json::from_slice(&attestation.envelope).map_err(|e| {
        Failure::unreadable(format!(
            "the .att layer, read as a DSSE envelope, {}",
            crate::untrusted::json_error(&e)
        ))
    })?;
    let payload = in_toto_payload(&envelope, "the envelope")?;
    // The same transparency-log rules as for a `.sig` layer: the `dev.sigstore.cosign/bundle`
    // annotation's entry (cosign logs a `dsse` entry, or before v2.4 an `intoto` one) must log this
    // envelope by this signer; required where the authority requires a log entry.
    let leaf = attestation.certificate.as_deref().and_then(leaf_der);
    let signers = signer_hashes(authority, leaf.as_deref());
    let logged = Logged {
        payload: &payload,
        signatures: envelope.signatures.iter().map(|s| s.sig.as_str()).collect(),
        envelope: Some(&attestation.envelope),
    };
    let integrated_time = legacy_log_entry(
        authority,
        attestation.rekor_bundle.as_deref(),
        &logged,
        &signers,
        "attestation",
    )?;
    proof.rekor_integrated_time = integrated_time;
    let key = signing_key(
        authority,
        attestation.certificate.as_deref().map(Material::Pem),
        attestation.chain.as_deref(),
        integrated_time,
        proof,
    )?;
    let pae = pae(&envelope.payload_type, &payload);
    let verifies = envelope.signatures.iter().any(|signature| {
        STANDARD
            .decode(&signature.sig)
            .is_ok_and(|raw| key.verify_signature(Signature::Raw(&raw), &pae).is_ok())
    });
    if !verifies {
        return Err(Failure::other_signer(if envelope.signatures.is_empty() {
            "the attestation is unsigned".to_owned()
        } else {
            describe_key_mismatch(authority, proof)
        }));
    }
    Statement::parse(&payload, "the envelope's payload")
}

/// An in-toto statement, as a DSSE envelope carries it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    predicate_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

impl Statement {
    fn parse(payload: &[u8], what: &str) -> Result<Statement, Failure> {
        let statement: Statement = serde_json::from_slice(payload).map_err(|e| {
            Failure::unreadable(format!(
                "{what}, read as an in-toto statement, {}",
                crate::untrusted::json_error(&e)
            ))
        })?;
        if !statement.kind.starts_with("https://in-toto.io/Statement/") {
            return Err(Failure::unreadable(format!(
                "{what} has _type {}, not an in-toto statement",
                crate::untrusted::quote(&statement.kind)
            )));
        }
        Ok(statement)
    }

    /// `Err(other_digest)` unless a subject names `digest` (sha256).
    fn names_digest(&self, digest: &str, what: &str) -> Result<(), Failure> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if self
            .subject
            .iter()
            .any(|s| s.digest.get("sha256").is_some_and(|d| d == hex))
        {
            return Ok(());
        }
        let signed: Vec<String> = self
            .subject
            .iter()
            .filter_map(|s| s.digest.get("sha256"))
            .map(|d| format!("sha256:{}", crate::untrusted::excerpt(d, 64)))
            .collect();
        Err(Failure::other_digest(format!(
            "the {what} is for {}, not for this image's {digest} (copied from another image, or the tag moved after signing)",
            if signed.is_empty() {
                "no digest".to_owned()
            } else {
                crate::untrusted::first_few(signed, 3)
            }
        )))
    }
}

/// Verifies a sigstore bundle's DSSE envelope against `authority` (its transparency-log entries, its
/// certificate or key, the signature over the PAE) and returns its in-toto statement.
fn verify_bundle(
    authority: &CompiledAuthority,
    bundle: &[u8],
    proof: &mut Proof,
) -> Result<Statement, Failure> {
    let bundle: Bundle = serde_json::from_slice(bundle).map_err(|e| {
        Failure::unreadable(format!(
            "the referrer, read as a sigstore bundle, {}",
            crate::untrusted::json_error(&e)
        ))
    })?;
    if !bundle
        .media_type
        .starts_with("application/vnd.dev.sigstore.bundle")
    {
        return Err(Failure::unreadable(format!(
            "the referrer has media type {}, not a sigstore bundle",
            crate::untrusted::quote(&bundle.media_type)
        )));
    }
    let Some(envelope) = bundle.dsse_envelope else {
        return Err(Failure::unreadable(if bundle.message_signature.is_some() {
            "the bundle signs a blob (messageSignature), not an image"
        } else {
            "the bundle holds no signature"
        }));
    };
    let payload = in_toto_payload(&envelope, "the bundle")?;
    let [envelope_signature] = envelope.signatures.as_slice() else {
        return Err(Failure::unreadable(format!(
            "the bundle has {} signatures; cosign writes exactly one",
            envelope.signatures.len()
        )));
    };
    let raw_signature = STANDARD
        .decode(&envelope_signature.sig)
        .map_err(|_| Failure::unreadable("the bundle's signature is not base64"))?;

    let material = &bundle.verification_material;
    let leaf = material
        .certificate
        .as_ref()
        .or_else(|| {
            material
                .x509_certificate_chain
                .as_ref()
                .and_then(|c| c.certificates.first())
        })
        .map(|c| {
            STANDARD
                .decode(&c.raw_bytes)
                .map_err(|_| Failure::unreadable("the bundle's certificate is not base64"))
        })
        .transpose()?;
    let signers = signer_hashes(authority, leaf.as_deref());
    let mut integrated_time = None;
    if !authority.rekor_keys.is_empty() {
        for entry in &material.tlog_entries {
            let logged = Logged {
                payload: &payload,
                signatures: vec![envelope_signature.sig.as_str()],
                envelope: None,
            };
            let checked = check_bundle_tlog_entry(authority, entry, &logged, &signers);
            integrated_time = optional_entry(authority, checked)
                .map_err(Failure::tlog)?
                .or(integrated_time);
        }
    }
    if authority.tlog_required && integrated_time.is_none() {
        return Err(Failure::tlog(
            "the bundle has no transparency-log entry, and this authority requires one",
        ));
    }
    proof.rekor_integrated_time = integrated_time;

    let chain: Vec<Vec<u8>> = material
        .x509_certificate_chain
        .as_ref()
        .map(|c| {
            c.certificates
                .iter()
                .skip(1)
                .filter_map(|c| STANDARD.decode(&c.raw_bytes).ok())
                .collect()
        })
        .unwrap_or_default();
    let key = signing_key_der(authority, leaf.as_deref(), &chain, integrated_time, proof)?;
    key.verify_signature(
        Signature::Raw(&raw_signature),
        &pae(&envelope.payload_type, &payload),
    )
    .map_err(|_| Failure::other_signer(describe_key_mismatch(authority, proof)))?;

    Statement::parse(&payload, "the bundle's payload")
}

/// A DSSE envelope's payload, which must be an in-toto statement; `what` names the envelope.
fn in_toto_payload(envelope: &Envelope, what: &str) -> Result<Vec<u8>, Failure> {
    if envelope.payload_type != IN_TOTO_PAYLOAD {
        return Err(Failure::unreadable(format!(
            "{what}'s payload type is {}, not an in-toto statement",
            crate::untrusted::quote(&envelope.payload_type)
        )));
    }
    STANDARD
        .decode(&envelope.payload)
        .map_err(|_| Failure::unreadable(format!("{what}'s payload is not base64")))
}

/// DSSE pre-authentication encoding: what a DSSE signature actually signs.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut encoded = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    encoded.extend_from_slice(payload);
    encoded
}

enum Material<'a> {
    Pem(&'a str),
}

/// The key that must have made the signature: the authority's own, or for keyless the key of a
/// certificate that chains to the trust root and names an accepted identity.
fn signing_key(
    authority: &CompiledAuthority,
    certificate: Option<Material<'_>>,
    chain_pem: Option<&str>,
    integrated_time: Option<i64>,
    proof: &mut Proof,
) -> Result<CosignVerificationKey, Failure> {
    let leaf = match certificate {
        Some(Material::Pem(pem)) => Some(
            Certificate::load_pem_chain(pem.as_bytes())
                .ok()
                .and_then(|certs| certs.into_iter().next())
                .and_then(|c| c.to_der().ok())
                .ok_or_else(|| Failure::unreadable("the signature's certificate does not parse"))?,
        ),
        None => None,
    };
    let chain: Vec<Vec<u8>> = chain_pem
        .and_then(|pem| Certificate::load_pem_chain(pem.as_bytes()).ok())
        .map(|certs| certs.iter().filter_map(|c| c.to_der().ok()).collect())
        .unwrap_or_default();
    signing_key_der(authority, leaf.as_deref(), &chain, integrated_time, proof)
}

fn signing_key_der(
    authority: &CompiledAuthority,
    leaf: Option<&[u8]>,
    chain: &[Vec<u8>],
    integrated_time: Option<i64>,
    proof: &mut Proof,
) -> Result<CosignVerificationKey, Failure> {
    match &authority.trust {
        Trust::Key { key, key_id } => {
            proof.key_id = Some(key_id.clone());
            Ok((**key).clone())
        }
        Trust::Keyless {
            identities,
            anchors,
            intermediates,
            sct,
        } => {
            let leaf = leaf.ok_or_else(|| {
                Failure::other_signer(
                    "the signature carries no certificate (was it made with a key?)",
                )
            })?;
            let certificate = Certificate::from_der(leaf).map_err(|e| {
                Failure::unreadable(format!("the signature's certificate does not parse: {e}"))
            })?;
            let (issuer, sans) = identity_of(&certificate);
            proof.issuer = issuer.clone();
            proof.subject = sans.first().cloned();

            // A Fulcio certificate lives minutes: it must have been valid when the log saw the signature,
            // or, without a log entry, now.
            let at = integrated_time
                .and_then(|t| u64::try_from(t).ok())
                .map(|t| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t)))
                .unwrap_or_else(UnixTime::now);
            let trust_anchors: Vec<_> = anchors
                .iter()
                .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
                .collect();
            let mut all_intermediates: Vec<CertificateDer<'_>> =
                intermediates.iter().cloned().collect();
            all_intermediates.extend(chain.iter().map(|der| CertificateDer::from(der.as_slice())));
            let leaf_der = CertificateDer::from(leaf);
            let end_entity = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| {
                Failure::certificate(format!("the signature's certificate is unusable: {e:?}"))
            })?;
            let path = end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &trust_anchors,
                    &all_intermediates,
                    at,
                    webpki::KeyUsage::required(EKU_CODE_SIGNING),
                    None,
                    None,
                )
                .map_err(|e| {
                    Failure::certificate(format!(
                        "the signing certificate does not chain to this authority's trust root ({e:?})"
                    ))
                })?;
            // Certificate transparency: the CA that the chain proved issued the leaf must also have
            // had it logged.
            if let SctCheck::Required(ct_logs) = sct {
                super::sct::check(ct_logs, &certificate, leaf, &path.issuer_spki())?;
            }

            let issuer_value = issuer.clone().unwrap_or_default();
            let accepted = identities.iter().any(|identity| {
                identity.issuer.matches(&issuer_value)
                    && sans.iter().any(|san| identity.subject.matches(san))
            });
            if !accepted {
                let wanted: Vec<String> = identities
                    .iter()
                    .map(|i| format!("issuer {} subject {}", i.issuer, i.subject))
                    .collect();
                return Err(Failure::other_signer(format!(
                    "signed by issuer {} subject {}, which this authority does not accept (wants {})",
                    crate::untrusted::quote(issuer.as_deref().unwrap_or("<none>")),
                    crate::untrusted::quote(sans.first().map(String::as_str).unwrap_or("<none>")),
                    wanted.join(" or ")
                )));
            }
            let spki = certificate.tbs_certificate().subject_public_key_info();
            CosignVerificationKey::try_from(spki).map_err(|e| {
                Failure::certificate(format!("the certificate's public key is unsupported: {e}"))
            })
        }
    }
}

/// The OIDC issuer (Fulcio's extension, v2 then v1) and the subject alternative names of a certificate.
fn identity_of(certificate: &Certificate) -> (Option<String>, Vec<String>) {
    let mut issuer_v1 = None;
    let mut issuer_v2 = None;
    let mut sans = Vec::new();
    for extension in certificate
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
    {
        let oid = extension.extn_id.to_string();
        let value = extension.extn_value.as_bytes();
        if oid == OID_ISSUER_V2 {
            issuer_v2 = Utf8StringRef::from_der(value)
                .ok()
                .map(|s| s.as_str().to_owned());
        } else if oid == OID_ISSUER_V1 {
            issuer_v1 = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if oid == OID_SAN
            && let Ok(names) = SubjectAltName::from_der(value)
        {
            for name in names.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(uri) => sans.push(uri.to_string()),
                    GeneralName::Rfc822Name(email) => sans.push(email.to_string()),
                    _ => {}
                }
            }
        }
    }
    (issuer_v2.or(issuer_v1), sans)
}

fn describe_key_mismatch(authority: &CompiledAuthority, proof: &Proof) -> String {
    match &authority.trust {
        Trust::Key { key_id, .. } => format!(
            "the signature does not verify with key {key_id} (signed with another key, or altered)"
        ),
        Trust::Keyless { .. } => format!(
            "the signature does not verify with the key of the certificate issued to {} (altered signature or payload)",
            crate::untrusted::quote(proof.subject.as_deref().unwrap_or("<none>"))
        ),
    }
}

/// The canonical document a Rekor signed entry timestamp signs.
#[derive(Serialize)]
struct SetPayload<'a> {
    body: &'a str,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: &'a str,
    #[serde(rename = "logIndex")]
    log_index: i64,
}

fn verify_set(
    authority: &CompiledAuthority,
    payload: &SetPayload<'_>,
    set_base64: &str,
) -> Result<(), String> {
    let key = authority.rekor_keys.get(payload.log_id).ok_or_else(|| {
        format!(
            "the transparency-log entry comes from log {}, which this authority does not trust",
            payload.log_id
        )
    })?;
    let canonical = serde_json_canonicalizer::to_vec(payload)
        .map_err(|e| format!("cannot canonicalize the log entry: {e}"))?;
    let set = STANDARD
        .decode(set_base64.trim())
        .map_err(|_| "the signed entry timestamp is not base64".to_owned())?;
    key.verify_signature(Signature::Raw(&set), &canonical)
        .map_err(|_| {
            "the transparency-log entry's signed timestamp does not verify with the Rekor key"
                .to_owned()
        })
}

/// The integrated time of a legacy layer's log entry (the `dev.sigstore.cosign/bundle` annotation
/// of a `.sig` or an `.att` layer, `what` says which): checked when the authority trusts a log, and
/// required when it requires an entry.
fn legacy_log_entry(
    authority: &CompiledAuthority,
    rekor_bundle: Option<&str>,
    logged: &Logged<'_>,
    signers: &[String],
    what: &str,
) -> Result<Option<i64>, Failure> {
    let integrated_time = match (rekor_bundle, authority.rekor_keys.is_empty()) {
        (Some(bundle), false) => optional_entry(
            authority,
            check_legacy_rekor_bundle(authority, bundle, logged, signers),
        )
        .map_err(Failure::tlog)?,
        _ => None,
    };
    if authority.tlog_required && integrated_time.is_none() {
        return Err(Failure::tlog(format!(
            "no transparency-log entry accompanies the {what}, and this authority requires one"
        )));
    }
    Ok(integrated_time)
}

/// The DER of the first certificate of PEM text.
fn leaf_der(pem: &str) -> Option<Vec<u8>> {
    Certificate::load_pem_chain(pem.as_bytes())
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .and_then(|c| c.to_der().ok())
}

/// What a log entry must record to be about one stored signature or attestation.
struct Logged<'a> {
    /// The signed payload: a simple-signing document, or a DSSE envelope's (decoded) payload.
    payload: &'a [u8],
    /// The base64 signatures over it (a DSSE envelope may hold several; cosign writes one).
    signatures: Vec<&'a str>,
    /// A legacy attestation's DSSE envelope as stored (the `.att` layer): what an `intoto` entry
    /// hashes instead of naming the signature.
    envelope: Option<&'a [u8]>,
}

/// Checks the `dev.sigstore.cosign/bundle` annotation and that its entry logs this very signature.
fn check_legacy_rekor_bundle(
    authority: &CompiledAuthority,
    bundle: &str,
    logged: &Logged<'_>,
    signers: &[String],
) -> Result<i64, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RekorBundle {
        signed_entry_timestamp: String,
        payload: RekorPayload,
    }
    #[derive(Deserialize)]
    struct RekorPayload {
        body: String,
        #[serde(rename = "integratedTime")]
        integrated_time: i64,
        #[serde(rename = "logIndex")]
        log_index: i64,
        #[serde(rename = "logID")]
        log_id: String,
    }
    let bundle: RekorBundle = serde_json::from_str(bundle).map_err(|e| {
        format!(
            "the Rekor bundle annotation {}",
            crate::untrusted::json_error(&e)
        )
    })?;
    let set = SetPayload {
        body: &bundle.payload.body,
        integrated_time: bundle.payload.integrated_time,
        log_id: &bundle.payload.log_id,
        log_index: bundle.payload.log_index,
    };
    verify_set(authority, &set, &bundle.signed_entry_timestamp)?;
    check_entry_body(&bundle.payload.body, logged, signers)?;
    Ok(bundle.payload.integrated_time)
}

fn check_bundle_tlog_entry(
    authority: &CompiledAuthority,
    entry: &TlogEntry,
    logged: &Logged<'_>,
    signers: &[String],
) -> Result<i64, String> {
    let number = |value: &serde_json::Value, field: &str| -> Result<i64, String> {
        match value {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("the transparency-log entry's {field} is not a number"))
    };
    let promise = entry.inclusion_promise.as_ref().ok_or_else(|| {
        "the transparency-log entry has no inclusion promise to check offline".to_owned()
    })?;
    let log_id = hex::encode(
        STANDARD
            .decode(&entry.log_id.key_id)
            .map_err(|_| "the log ID is not base64".to_owned())?,
    );
    let integrated_time = number(&entry.integrated_time, "integratedTime")?;
    let set = SetPayload {
        body: &entry.canonicalized_body,
        integrated_time,
        log_id: &log_id,
        log_index: number(&entry.log_index, "logIndex")?,
    };
    verify_set(authority, &set, &promise.signed_entry_timestamp)?;
    check_entry_body(&entry.canonicalized_body, logged, signers)?;
    Ok(integrated_time)
}

/// A failed entry check refuses only where an entry is required: where it is optional, a foreign or
/// broken entry (say from another log) is set aside and the signature stands on its own.
fn optional_entry(
    authority: &CompiledAuthority,
    checked: Result<i64, String>,
) -> Result<Option<i64>, String> {
    match checked {
        Ok(time) => Ok(Some(time)),
        Err(reason) if authority.tlog_required => Err(reason),
        Err(_) => Ok(None),
    }
}

/// Hex SHA-256 of the DER forms a log entry may name for this signer: the authority's key, or the
/// signing certificate and its key.
fn signer_hashes(authority: &CompiledAuthority, leaf: Option<&[u8]>) -> Vec<String> {
    match &authority.trust {
        Trust::Key { key_id, .. } => vec![key_id.trim_start_matches("sha256:").to_owned()],
        Trust::Keyless { .. } => leaf
            .map(|der| {
                let mut hashes = vec![hex::encode(Sha256::digest(der))];
                if let Ok(spki) = Certificate::from_der(der)
                    .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der())
                {
                    hashes.push(hex::encode(Sha256::digest(spki)));
                }
                hashes
            })
            .unwrap_or_default(),
    }
}

/// Hex SHA-256 of the DER inside base64-encoded PEM text, as log entries name keys and certificates.
fn logged_signer_hash(content_base64: &str) -> Option<String> {
    let pem = STANDARD.decode(content_base64.trim()).ok()?;
    let (_, der) = x509_cert::der::pem::decode_vec(&pem).ok()?;
    Some(hex::encode(Sha256::digest(der)))
}

/// The logged entry must be about this signature of this payload by this signer: a valid entry for
/// something else proves nothing. A `dsse` entry names the payload's hash and the signatures; an
/// `intoto` (v0.0.1) entry names no signature but the hash of the whole envelope as stored, which
/// holds them. (A `dsse` entry's envelope hash is not compared: the payload, the signature and the
/// signer it names are what the envelope's signature proves, however the envelope was serialized.)
fn check_entry_body(
    body_base64: &str,
    logged: &Logged<'_>,
    signers: &[String],
) -> Result<(), String> {
    let body = STANDARD
        .decode(body_base64)
        .map_err(|_| "the log entry body is not base64".to_owned())?;
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "the log entry body is not JSON".to_owned())?;
    let payload_hash = hex::encode(Sha256::digest(logged.payload));
    let spec = &body["spec"];
    let (hash, signatures, verifiers) = match body["kind"].as_str() {
        Some("hashedrekord") => (
            spec["data"]["hash"]["value"].as_str(),
            vec![spec["signature"]["content"].as_str()],
            vec![spec["signature"]["publicKey"]["content"].as_str()],
        ),
        Some("dsse") => {
            let entries = spec["signatures"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            (
                spec["payloadHash"]["value"].as_str(),
                entries.iter().map(|s| s["signature"].as_str()).collect(),
                entries.iter().map(|s| s["verifier"].as_str()).collect(),
            )
        }
        Some("intoto") if spec["content"]["hash"].is_object() => {
            let Some(envelope) = logged.envelope else {
                return Err(
                    "the log entry is an intoto entry, which logs attestations, not this signature"
                        .into(),
                );
            };
            let envelope_hash = hex::encode(Sha256::digest(envelope));
            if spec["content"]["hash"]["value"].as_str() != Some(envelope_hash.as_str()) {
                return Err(
                    "the transparency-log entry is for another envelope (signature)".into(),
                );
            }
            (
                spec["content"]["payloadHash"]["value"].as_str(),
                // The envelope hash above covers its signatures.
                logged.signatures.iter().map(|s| Some(*s)).collect(),
                vec![spec["publicKey"].as_str()],
            )
        }
        other => {
            return Err(format!(
                "the log entry has kind {}, which registryx-guard does not check",
                crate::untrusted::quote(other.unwrap_or("<none>"))
            ));
        }
    };
    if hash != Some(payload_hash.as_str()) {
        return Err("the transparency-log entry is for another payload".into());
    }
    if !signatures
        .iter()
        .flatten()
        .any(|s| logged.signatures.iter().any(|mine| s.trim() == mine.trim()))
    {
        return Err("the transparency-log entry is for another signature".into());
    }
    let named = verifiers
        .iter()
        .flatten()
        .filter_map(|content| logged_signer_hash(content))
        .any(|hash| signers.contains(&hash));
    if !named {
        return Err("the transparency-log entry names another signer (key or certificate)".into());
    }
    Ok(())
}

/// A digest a signature names, as a refusal shows it: plain when it is one, quoted and cut when it is
/// whatever else a registry put there.
fn shown_digest(digest: &str) -> String {
    if crate::registry::is_sha256_digest(digest) {
        digest.to_owned()
    } else {
        crate::untrusted::quote(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn entry_bodies_must_name_this_payload_and_signature() {
        let payload = b"payload";
        let hash = hex::encode(Sha256::digest(payload));
        let key_pem = "-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----\n";
        let signer = hex::encode(Sha256::digest([1u8, 2, 3]));
        let body = serde_json::json!({"kind": "hashedrekord", "spec": {"data": {"hash": {"value": hash}},
            "signature": {"content": "c2ln", "publicKey": {"content": STANDARD.encode(key_pem)}}}});
        let encoded = STANDARD.encode(body.to_string());
        let signers = [signer];
        let logged = |payload: &'static [u8], signature: &'static str| Logged {
            payload,
            signatures: vec![signature],
            envelope: None,
        };
        assert!(check_entry_body(&encoded, &logged(payload, "c2ln"), &signers).is_ok());
        assert!(
            check_entry_body(&encoded, &logged(payload, "c2ln"), &["00".to_owned()])
                .unwrap_err()
                .contains("another signer")
        );
        assert!(
            check_entry_body(&encoded, &logged(b"other", "c2ln"), &signers)
                .unwrap_err()
                .contains("another payload")
        );
        assert!(
            check_entry_body(&encoded, &logged(payload, "b3RoZXI="), &signers)
                .unwrap_err()
                .contains("another signature")
        );
    }

    #[test]
    fn intoto_entries_must_name_this_envelope_and_payload() {
        let (envelope, payload) = (
            br#"{"payloadType":"x"}"#.as_slice(),
            b"statement".as_slice(),
        );
        let key_pem = "-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----\n";
        let signers = [hex::encode(Sha256::digest([1u8, 2, 3]))];
        let body = |envelope: &[u8]| {
            let body = serde_json::json!({"apiVersion": "0.0.1", "kind": "intoto", "spec": {
                "content": {"hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(envelope))},
                            "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))}},
                "publicKey": STANDARD.encode(key_pem)}});
            STANDARD.encode(body.to_string())
        };
        let logged = |payload: &'static [u8], envelope: Option<&'static [u8]>| Logged {
            payload,
            signatures: vec!["c2ln"],
            envelope,
        };
        assert!(
            check_entry_body(&body(envelope), &logged(payload, Some(envelope)), &signers).is_ok()
        );
        assert!(
            check_entry_body(
                &body(b"another envelope"),
                &logged(payload, Some(envelope)),
                &signers
            )
            .unwrap_err()
            .contains("another envelope")
        );
        assert!(
            check_entry_body(&body(envelope), &logged(b"other", Some(envelope)), &signers)
                .unwrap_err()
                .contains("another payload")
        );
        // Not an attestation: an intoto entry logs no simple-signing signature.
        assert!(check_entry_body(&body(envelope), &logged(payload, None), &signers).is_err());
    }
}
