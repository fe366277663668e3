//! Certificate transparency for keyless certificates: the signed certificate timestamps (SCTs) that a
//! Fulcio leaf embeds (RFC 6962 §3.3, extension 1.3.6.1.4.1.11129.2.4.2), verified offline with the CT
//! log keys of the authority's trust root. An SCT is a CT log's signed promise that it logged the
//! precertificate: the leaf's TBSCertificate without the SCT extension, and the hash of its issuer's
//! key. A certificate without one, or with one that no trusted log made for it, was hidden from the
//! log's monitors.
//!
//! sigstore-rs verifies SCTs only inside its own bundle verifier (its `crypto::transparency` is
//! private), so the precertificate entry is rebuilt here from the leaf's DER with x509-cert (whose
//! `sct` feature decodes the list) and the signature checked with sigstore's `CosignVerificationKey`,
//! as Rekor's signed entry timestamps are.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};
use sigstore::crypto::Signature;
use x509_cert::Certificate;
use x509_cert::der::{self, Decode as _, Encode as _, Tag, TagNumber, Tagged as _};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::SignedCertificateTimestampList;
use x509_cert::ext::pkix::sct::{SignedCertificateTimestamp, Version};

use crate::policy::authority::CtLogKey;
use crate::refusal::{Failure, Reason};

/// Checks that `leaf` (its DER `leaf_der`) embeds an SCT that one of `ct_logs` (by hex log ID) made
/// over its precertificate, issued by the CA whose DER SubjectPublicKeyInfo is `issuer_spki`, while
/// that log was in service. One verified SCT is enough, as in cosign; SCTs of logs the authority does
/// not know are passed over.
pub(super) fn check(
    ct_logs: &BTreeMap<String, CtLogKey>,
    leaf: &Certificate,
    leaf_der: &[u8],
    issuer_spki: &[u8],
) -> Result<(), Failure> {
    let invalid = |message: String| Failure::new(Reason::SctInvalid, message);
    let list = match leaf
        .tbs_certificate()
        .get_extension::<SignedCertificateTimestampList>()
    {
        Ok(Some((_, list))) => list,
        Ok(None) => return Err(missing()),
        Err(e) => {
            return Err(invalid(format!(
                "the signing certificate's embedded SCT list does not parse: {e}"
            )));
        }
    };
    let scts = list
        .parse_timestamps()
        .map_err(|e| format!("{e:?}"))
        .and_then(|list| {
            list.iter()
                .map(|sct| sct.parse_timestamp().map_err(|e| format!("{e:?}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| {
            invalid(format!(
                "the signing certificate's embedded SCT list cannot be read ({})",
                crate::untrusted::excerpt(&e, 120)
            ))
        })?;
    if scts.is_empty() {
        return Err(missing());
    }
    let precertificate = precertificate_tbs(leaf_der).map_err(|e| {
        invalid(format!(
            "the signing certificate's precertificate cannot be rebuilt: {e}"
        ))
    })?;
    let issuer_key_hash: [u8; 32] = Sha256::digest(issuer_spki).into();
    let mut failures = Vec::new();
    for sct in &scts {
        let log_id = hex::encode(sct.log_id.key_id);
        let Some(log) = ct_logs.get(&log_id) else {
            failures.push(format!(
                "an SCT from a CT log this authority does not trust (log ID {log_id})"
            ));
            continue;
        };
        let at = i64::try_from(sct.timestamp).unwrap_or(i64::MAX);
        if log.valid_from.is_some_and(|from| at < from)
            || log.valid_until.is_some_and(|until| at > until)
        {
            failures.push(format!(
                "an SCT dated {} ms after 1970, outside the validity of CT log {log_id}",
                sct.timestamp
            ));
            continue;
        }
        let signed = signed_entry(sct, &issuer_key_hash, &precertificate);
        let signature = Signature::Raw(sct.signature.signature.as_slice());
        match log.key.verify_signature(signature, &signed) {
            Ok(()) => return Ok(()),
            Err(_) => failures.push(format!(
                "an SCT that does not verify with the key of CT log {log_id} (forged or altered, or \
                 made for another certificate)"
            )),
        }
    }
    Err(invalid(format!(
        "the signing certificate's embedded SCTs do not prove it was logged: {}",
        failures.join("; ")
    )))
}

fn missing() -> Failure {
    Failure::new(
        Reason::SctMissing,
        "the signing certificate carries no embedded SCT, and this authority's trust root names a CT \
         log that must have logged it",
    )
}

/// The `digitally-signed` struct an SCT signs (RFC 6962 §3.2), TLS-encoded: version, signature type
/// `certificate_timestamp`, the timestamp, entry type `precert_entry`, the issuer's key hash, the
/// precertificate's TBSCertificate (24-bit length) and the SCT's extensions (16-bit length).
fn signed_entry(
    sct: &SignedCertificateTimestamp,
    issuer_key_hash: &[u8; 32],
    precertificate: &[u8],
) -> Vec<u8> {
    const CERTIFICATE_TIMESTAMP: u8 = 0;
    const PRECERT_ENTRY: [u8; 2] = [0, 1];
    let version = match sct.version {
        Version::V1 => 0u8,
    };
    let extensions = sct.extensions.as_slice();
    let mut signed = Vec::with_capacity(precertificate.len() + extensions.len() + 64);
    signed.push(version);
    signed.push(CERTIFICATE_TIMESTAMP);
    signed.extend(sct.timestamp.to_be_bytes());
    signed.extend(PRECERT_ENTRY);
    signed.extend(issuer_key_hash);
    // A certificate is far below 2^24 bytes (signatures are capped long before).
    signed.extend(&(precertificate.len() as u32).to_be_bytes()[1..]);
    signed.extend(precertificate);
    signed.extend((extensions.len() as u16).to_be_bytes());
    signed.extend(extensions);
    signed
}

/// The precertificate's TBSCertificate: the leaf's own TBSCertificate bytes with the SCT list
/// extension taken out, everything else as it was encoded (a decoded `TbsCertificate` would not
/// re-encode byte for byte: x509-cert writes times before 2050 as UTCTime whatever the issuer wrote).
fn precertificate_tbs(leaf_der: &[u8]) -> der::Result<Vec<u8>> {
    const EXTENSIONS: Tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(3),
    };
    let certificate = Vec::<der::Any>::from_der(leaf_der)?;
    let tbs = certificate
        .first()
        .ok_or_else(|| Tag::Sequence.value_error())?;
    let mut fields: Vec<der::Any> = tbs.decode_as()?;
    if let Some(extensions) = fields.iter_mut().find(|field| field.tag() == EXTENSIONS) {
        // [3] EXPLICIT Extensions: the context tag wraps one SEQUENCE OF Extension.
        let mut kept = Vec::new();
        for extension in Vec::<der::Any>::from_der(extensions.value())? {
            if extension.decode_as::<Extension>()?.extn_id
                != <SignedCertificateTimestampList as der::oid::AssociatedOid>::OID
            {
                kept.push(extension);
            }
        }
        *extensions = der::Any::new(EXTENSIONS, kept.to_der()?)?;
    }
    fields.to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public-good Fulcio leaf with its embedded SCT, its intermediate's key and the CT log's key,
    /// as published with sigstore-rs's own test of the same check (Apache-2.0).
    const LEAF: &str = "-----BEGIN CERTIFICATE-----
MIICzDCCAlGgAwIBAgIUF96OLbM9/tDVHKCJliXLTFvnfjAwCgYIKoZIzj0EAwMw
NzEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MR4wHAYDVQQDExVzaWdzdG9yZS1pbnRl
cm1lZGlhdGUwHhcNMjMxMjEzMDU1MDU1WhcNMjMxMjEzMDYwMDU1WjAAMFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAEmir+Lah2291zCsLkmREQNLzf99z571BNB+fa
rerSLGzcwLFK7GRLTGYcO0oStxCYavxRQPMo3JvB8vGtZbn/76OCAXAwggFsMA4G
A1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAzAdBgNVHQ4EFgQU8U9M
t9GMrRm8+gifPtc63nlP3OIwHwYDVR0jBBgwFoAU39Ppz1YkEZb5qNjpKFWixi4Y
ZD8wGwYDVR0RAQH/BBEwD4ENYXNjQHRldHN1by5zaDAsBgorBgEEAYO/MAEBBB5o
dHRwczovL2dpdGh1Yi5jb20vbG9naW4vb2F1dGgwLgYKKwYBBAGDvzABCAQgDB5o
dHRwczovL2dpdGh1Yi5jb20vbG9naW4vb2F1dGgwgYkGCisGAQQB1nkCBAIEewR5
AHcAdQDdPTBqxscRMmMZHhyZZzcCokpeuN48rf+HinKALynujgAAAYxhumYsAAAE
AwBGMEQCIHRRe20lRrNM4xd07mpjTtgaE6FGS3jjF++zW8ZMnth3AiAd6LVAAeVW
hSW4T0XJRw9lGU6/EK9+ELZpEjrY03dJ1zAKBggqhkjOPQQDAwNpADBmAjEAiHqK
W9PQ/5h7VROVIWPaxUo3LhrL2sZanw4bzTDBDY0dRR19ZFzjtAph1RzpQqppAjEA
plAvxwkAIR2jurboJZ4Zm9rNAx8KvA+A5yQFzNkGgKDLjTJrKmSKoIcWV3j7WfdL
-----END CERTIFICATE-----";

    /// Fulcio's `sigstore-intermediate`, which issued [`LEAF`].
    const INTERMEDIATE: &str = "-----BEGIN CERTIFICATE-----
MIICGjCCAaGgAwIBAgIUALnViVfnU0brJasmRkHrn/UnfaQwCgYIKoZIzj0EAwMw
KjEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MREwDwYDVQQDEwhzaWdzdG9yZTAeFw0y
MjA0MTMyMDA2MTVaFw0zMTEwMDUxMzU2NThaMDcxFTATBgNVBAoTDHNpZ3N0b3Jl
LmRldjEeMBwGA1UEAxMVc2lnc3RvcmUtaW50ZXJtZWRpYXRlMHYwEAYHKoZIzj0C
AQYFK4EEACIDYgAE8RVS/ysH+NOvuDZyPIZtilgUF9NlarYpAd9HP1vBBH1U5CV7
7LSS7s0ZiH4nE7Hv7ptS6LvvR/STk798LVgMzLlJ4HeIfF3tHSaexLcYpSASr1kS
0N/RgBJz/9jWCiXno3sweTAOBgNVHQ8BAf8EBAMCAQYwEwYDVR0lBAwwCgYIKwYB
BQUHAwMwEgYDVR0TAQH/BAgwBgEB/wIBADAdBgNVHQ4EFgQU39Ppz1YkEZb5qNjp
KFWixi4YZD8wHwYDVR0jBBgwFoAUWMAeX5FFpWapesyQoZMi0CrFxfowCgYIKoZI
zj0EAwMDZwAwZAIwPCsQK4DYiZYDPIaDi5HFKnfxXx6ASSVmERfsynYBiX2X6SJR
nZU84/9DZdnFvvxmAjBOt6QpBlc4J/0DxvkTCqpclvziL6BCCPnjdlIB3Pu3BxsP
mygUY7Ii2zbdCdliiow=
-----END CERTIFICATE-----";

    /// The public-good CT log's key (ctfe.sigstore.dev).
    const CT_LOG_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiPSlFi0CmFTfEjCUqF9HuCEcYXNK
AaYalIJmBZ8yyezPjTqhxrKBpMnaocVtLJBI1eM3uXnQzQGAJdJ4gs9Fyw==
-----END PUBLIC KEY-----";

    fn der(pem: &str) -> Vec<u8> {
        der::pem::decode_vec(pem.as_bytes()).unwrap().1
    }

    /// The SCT of [`LEAF`] is dated 2023-12-13T05:50:55.020Z.
    const SCT_TIME: i64 = 1_702_446_655_020;

    fn check_with(ct_log_key_der: &[u8], leaf_der: &[u8]) -> Result<(), Failure> {
        check_within(ct_log_key_der, leaf_der, None, None)
    }

    fn check_within(
        ct_log_key_der: &[u8],
        leaf_der: &[u8],
        valid_from: Option<i64>,
        valid_until: Option<i64>,
    ) -> Result<(), Failure> {
        let log = CtLogKey {
            key: sigstore::crypto::CosignVerificationKey::try_from_der(ct_log_key_der).unwrap(),
            valid_from,
            valid_until,
        };
        let logs = BTreeMap::from([(hex::encode(Sha256::digest(ct_log_key_der)), log)]);
        let intermediate = Certificate::from_der(&der(INTERMEDIATE)).unwrap();
        let issuer_spki = intermediate
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap();
        let leaf = Certificate::from_der(leaf_der).unwrap();
        check(&logs, &leaf, leaf_der, &issuer_spki)
    }

    #[track_caller]
    fn assert_invalid(checked: Result<(), Failure>, saying: &str) {
        let failure = checked.unwrap_err();
        assert_eq!(failure.reason, Reason::SctInvalid);
        assert!(failure.message.contains(saying), "{}", failure.message);
    }

    /// The check agrees with Fulcio and its CT log on a certificate they issued and logged.
    #[test]
    fn a_public_good_fulcio_certificate_carries_a_valid_sct() {
        check_with(&der(CT_LOG_KEY), &der(LEAF)).unwrap();
    }

    /// A log retired after the SCT still vouches for it; one that started or retired before does not.
    #[test]
    fn an_sct_counts_only_while_its_log_was_in_service() {
        let (key, leaf) = (der(CT_LOG_KEY), der(LEAF));
        check_within(&key, &leaf, Some(SCT_TIME - 1), Some(SCT_TIME + 1)).unwrap();
        for (from, until) in [(Some(SCT_TIME + 1), None), (None, Some(SCT_TIME - 1))] {
            assert_invalid(
                check_within(&key, &leaf, from, until),
                "outside the validity of CT log dd3d306a",
            );
        }
    }

    #[test]
    fn an_sct_of_another_log_or_over_other_bytes_is_refused() {
        let other_log = der(
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2jhYP5wNM/5o46Yjh3zE4IXzSZfr\nRIZ5GBFkaA9TKSt1iFTmS8qLUIaJXNAkpxWTFHxMEUnAeDcQ6w4BW6jHzw==\n-----END PUBLIC KEY-----\n",
        );
        assert_invalid(
            check_with(&other_log, &der(LEAF)),
            "does not trust (log ID dd3d306a",
        );

        // One bit of the TBSCertificate's SAN changed (the email's first letter): the SCT no longer
        // covers these bytes. (The certificate's own signature breaks too, but that is the chain
        // check's business.)
        let mut altered = der(LEAF);
        let at = altered
            .windows(13)
            .position(|w| w == b"asc@tetsuo.sh")
            .unwrap();
        altered[at] ^= 0x02;
        assert_invalid(
            check_with(&der(CT_LOG_KEY), &altered),
            "does not verify with the key of CT log dd3d306a",
        );
    }

    #[test]
    fn the_precertificate_is_the_leaf_without_its_sct_extension() {
        let leaf = der(LEAF);
        let certificate = Certificate::from_der(&leaf).unwrap();
        let precertificate =
            x509_cert::TbsCertificate::from_der(&precertificate_tbs(&leaf).unwrap()).unwrap();
        let sct_oid = <SignedCertificateTimestampList as der::oid::AssociatedOid>::OID;
        let expected: Vec<&Extension> = certificate
            .tbs_certificate()
            .extensions()
            .unwrap()
            .iter()
            .filter(|e| e.extn_id != sct_oid)
            .collect();
        assert_eq!(
            expected.len(),
            7,
            "the leaf has 8 extensions, one the SCT list"
        );
        let kept: Vec<&Extension> = precertificate.extensions().unwrap().iter().collect();
        assert_eq!(kept, expected);
        assert_eq!(
            precertificate.serial_number(),
            certificate.tbs_certificate().serial_number()
        );
    }
}
