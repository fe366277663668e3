//! The sigstore bundle's JSON (`application/vnd.dev.sigstore.bundle*`) as cosign writes it for an image:
//! only the fields the checks read, deserialized from untrusted bytes. Base64 fields stay strings and
//! `logIndex`/`integratedTime` stay JSON values (a number or a string): the checks decode them with
//! their own messages, entry by entry, so a broken log entry is set aside where the log is optional
//! rather than failing the whole bundle, and the signature is compared in the log entry as written.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Bundle {
    #[serde(default)]
    pub(super) media_type: String,
    pub(super) verification_material: VerificationMaterial,
    #[serde(default)]
    pub(super) dsse_envelope: Option<Envelope>,
    #[serde(default)]
    pub(super) message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct VerificationMaterial {
    #[serde(default)]
    pub(super) certificate: Option<RawBytes>,
    #[serde(default)]
    pub(super) x509_certificate_chain: Option<CertificateChain>,
    #[serde(default)]
    pub(super) tlog_entries: Vec<TlogEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawBytes {
    pub(super) raw_bytes: String,
}

#[derive(Deserialize)]
pub(super) struct CertificateChain {
    #[serde(default)]
    pub(super) certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope {
    pub(super) payload: String,
    pub(super) payload_type: String,
    #[serde(default)]
    pub(super) signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
pub(super) struct EnvelopeSignature {
    pub(super) sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TlogEntry {
    pub(super) log_index: serde_json::Value,
    pub(super) log_id: LogId,
    pub(super) integrated_time: serde_json::Value,
    #[serde(default)]
    pub(super) inclusion_promise: Option<InclusionPromise>,
    pub(super) canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogId {
    pub(super) key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InclusionPromise {
    pub(super) signed_entry_timestamp: String,
}
