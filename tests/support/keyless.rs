//! A test certificate authority for "keyless"-style signatures without Fulcio: it issues short-lived
//! leaves that look like Fulcio's (code-signing EKU, the identity in the SAN, the OIDC issuer in
//! Sigstore's extensions), and real cosign signs with them through `--certificate`. Nothing goes to
//! Fulcio, Rekor or a CT log: these signatures carry no transparency-log entry, and a leaf carries an
//! embedded SCT only when a test's own CT log ([`TestCtLog`]) signs one for it ([`TestCa::issue_with`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData as _, SanType, SerialNumber, SigningKey as _,
};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::cosign::{Format, assert_success, attest_command, command_in, sign_command};

/// Fulcio's "Issuer (V1)" extension: the OIDC issuer as raw string bytes (deprecated, still read).
pub const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
/// Fulcio's "Issuer (V2)" extension: the OIDC issuer as a DER UTF8String.
pub const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
/// RFC 6962's embedded SCT list: an OCTET STRING holding the TLS-encoded `SignedCertificateTimestampList`.
pub const OID_EMBEDDED_SCTS: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

/// Every certificate here is valid from an hour ago to a day ahead: already valid whatever the clock
/// skew between the test and the tools, and never expiring during a run. Cosign checks the chain at the
/// leaf's `notBefore`, so a CA made before the leaf always covers it.
fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(1);
}

/// RFC 3339, for the `validFor` of trusted-root entries.
fn a_day_ago() -> String {
    (OffsetDateTime::now_utc() - Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 time")
}

fn ca_params(common_name: &str, path_length: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "registryx-guard tests");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(match path_length {
        Some(length) => BasicConstraints::Constrained(length),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    params
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate an ECDSA P-256 key")
}

/// The DER encoding of a primitive value of `tag` holding `bytes`.
fn der(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut der = vec![tag];
    match bytes.len() {
        len @ 0..=0x7f => der.push(len as u8),
        len @ 0x80..=0xff => der.extend([0x81, len as u8]),
        len @ 0x100..=0xffff => der.extend([0x82, (len >> 8) as u8, len as u8]),
        len => panic!("{len} bytes are too long for a test certificate"),
    }
    der.extend_from_slice(bytes);
    der
}

/// The DER encoding of a UTF8String (tag 12), as Fulcio writes its V2 extensions.
fn der_utf8_string(value: &str) -> Vec<u8> {
    der(0x0c, value.as_bytes())
}

/// `bytes` behind their length as a TLS vector with a length of `width` bytes (RFC 5246 §4.3).
fn tls_vector(width: usize, bytes: &[u8]) -> Vec<u8> {
    let length = bytes.len().to_be_bytes();
    assert!(
        length[..length.len() - width].iter().all(|b| *b == 0),
        "{} bytes do not fit a TLS vector of {width}-byte length",
        bytes.len()
    );
    let mut vector = length[length.len() - width..].to_vec();
    vector.extend_from_slice(bytes);
    vector
}

/// A test certificate-transparency log: nothing but the ECDSA P-256 key that signs SCTs, as Fulcio's CT
/// log's does.
pub struct TestCtLog {
    key: KeyPair,
}

impl Default for TestCtLog {
    fn default() -> Self {
        TestCtLog::new()
    }
}

impl TestCtLog {
    pub fn new() -> TestCtLog {
        TestCtLog { key: new_key() }
    }

    /// What a policy puts in `trustRoot.ctLogKey`.
    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// The DER SubjectPublicKeyInfo of the log's key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// RFC 6962's log ID: the SHA-256 of the key's DER SubjectPublicKeyInfo.
    pub fn log_id(&self) -> [u8; 32] {
        Sha256::digest(self.spki_der()).into()
    }

    /// `trusted_root` (a sigstore `trusted_root.json`) with this log as its one CT log.
    fn trusted_by(&self, mut trusted_root: serde_json::Value) -> serde_json::Value {
        trusted_root["ctlogs"] = serde_json::json!([self.instance()]);
        trusted_root
    }

    /// The log as a `ctlogs` entry of a sigstore `trusted_root.json`.
    fn instance(&self) -> serde_json::Value {
        let base64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        serde_json::json!({
            "baseUrl": "https://ctfe.registryx-guard.test",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": base64(&self.spki_der()),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": a_day_ago()},
            },
            "logId": {"keyId": base64(&self.log_id())},
        })
    }

    /// An RFC 6962 v1 SCT, TLS-encoded, by which this log says it logged the precertificate
    /// `tbs_certificate` of the issuer whose key's DER SubjectPublicKeyInfo hashes to `issuer_key_hash`,
    /// naming `log_id` as the log.
    fn sct(&self, log_id: [u8; 32], issuer_key_hash: [u8; 32], tbs_certificate: &[u8]) -> Vec<u8> {
        let timestamp = u64::try_from(OffsetDateTime::now_utc().unix_timestamp() * 1000)
            .expect("a time after 1970");
        // The `digitally-signed` struct of RFC 6962 §3.2: version v1, certificate_timestamp, the
        // timestamp, a precert_entry (issuer_key_hash, the TBSCertificate), no extensions.
        let mut signed = vec![0, 0];
        signed.extend(timestamp.to_be_bytes());
        signed.extend([0, 1]);
        signed.extend(issuer_key_hash);
        signed.extend(tls_vector(3, tbs_certificate));
        signed.extend(tls_vector(2, &[]));
        let signature = self.key.sign(&signed).expect("sign the SCT");

        let mut sct = vec![0];
        sct.extend(log_id);
        sct.extend(timestamp.to_be_bytes());
        sct.extend(tls_vector(2, &[]));
        // SHA-256 (4), ECDSA (3), then the DER signature.
        sct.extend([4, 3]);
        sct.extend(tls_vector(2, &signature));
        sct
    }
}

/// The SCT a leaf carries in its embedded SCT list extension.
#[derive(Clone, Copy)]
pub enum Sct<'a> {
    /// No SCT extension at all: what a CA that does not log gives.
    None,
    /// The log's SCT over this leaf's precertificate: what Fulcio gives.
    By(&'a TestCtLog),
    /// The log's SCT with one bit of its signature flipped.
    Flipped(&'a TestCtLog),
    /// An SCT that names the log `named` but that `signer` signed: a log whose key the forger lacks.
    Impersonating {
        named: &'a TestCtLog,
        signer: &'a TestCtLog,
    },
    /// The log's genuine SCT for another certificate of the same CA, grafted onto this one.
    Grafted(&'a TestCtLog),
}

/// A root CA, optionally with an intermediate that issues the leaves (like Fulcio's
/// `sigstore-intermediate`).
pub struct TestCa {
    name: String,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: Option<CertifiedIssuer<'static, KeyPair>>,
}

impl TestCa {
    /// A self-signed ECDSA P-256 root that issues leaves itself.
    pub fn new(name: &str) -> TestCa {
        let root = CertifiedIssuer::self_signed(ca_params(name, None), new_key())
            .expect("self-sign the test root");
        TestCa {
            name: name.to_owned(),
            root,
            intermediate: None,
        }
    }

    /// A root and an intermediate under it; the intermediate issues the leaves. The intermediate
    /// carries the code-signing EKU, as Fulcio's does (Go's chain check demands that any EKU on the
    /// path allows code signing).
    pub fn with_intermediate(name: &str) -> TestCa {
        let ca = TestCa::new(name);
        let mut params = ca_params(&format!("{name} intermediate"), Some(0));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let intermediate = CertifiedIssuer::signed_by(params, new_key(), &*ca.root)
            .expect("sign the test intermediate");
        TestCa {
            intermediate: Some(intermediate),
            ..ca
        }
    }

    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    pub fn intermediate_pem(&self) -> Option<String> {
        self.intermediate.as_ref().map(|i| i.pem())
    }

    /// What `--certificate-chain` takes: the intermediate (if any) first, the root last.
    pub fn chain_pem(&self) -> String {
        let mut chain = self.intermediate_pem().unwrap_or_default();
        chain.push_str(&self.root_pem());
        chain
    }

    /// A sigstore `trusted_root.json` (TrustedRoot v0.1) whose only certificate authority is this CA,
    /// with no transparency log, CT log or timestamp authority: what `cosign verify --trusted-root`
    /// needs to check a bundle, and what a sigstore client is given instead of the public-good root.
    pub fn trusted_root_json(&self) -> serde_json::Value {
        let base64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        let mut certificates = Vec::new();
        if let Some(intermediate) = &self.intermediate {
            certificates.push(serde_json::json!({"rawBytes": base64(intermediate.der())}));
        }
        certificates.push(serde_json::json!({"rawBytes": base64(self.root.der())}));
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [],
            "certificateAuthorities": [{
                "subject": {"organization": "registryx-guard tests", "commonName": self.name},
                "uri": "https://fulcio.registryx-guard.test",
                "certChain": {"certificates": certificates},
                "validFor": {"start": a_day_ago()},
            }],
            "ctlogs": [],
            "timestampAuthorities": [],
        })
    }

    /// [`TestCa::trusted_root_json`] with `ct_log` as its one CT log (`ctlogs`).
    pub fn trusted_root_json_with_ct_log(&self, ct_log: &TestCtLog) -> serde_json::Value {
        ct_log.trusted_by(self.trusted_root_json())
    }

    /// Issues a Fulcio-style leaf for `subject` (a URI such as
    /// `https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main`, or an email address)
    /// as if `issuer` (an OIDC issuer URL) had vouched for it, and prepares cosign to sign with it. The
    /// leaf carries no SCT.
    pub fn issue(&self, issuer: &str, subject: &str) -> Leaf {
        self.issue_with(issuer, subject, Sct::None)
    }

    /// The parameters of a Fulcio-style leaf (see [`TestCa::issue`]) for `key`, with a serial number
    /// of its own.
    fn leaf_params(issuer: &str, subject: &str, key: &KeyPair) -> CertificateParams {
        let mut params = CertificateParams::default();
        // Fulcio leaves have an empty subject; the identity is only in the (then critical) SAN.
        params.distinguished_name = DistinguishedName::new();
        let san = Ia5String::try_from(subject.to_owned())
            .unwrap_or_else(|e| panic!("subject {subject:?} is not IA5: {e}"));
        params.subject_alt_names = vec![if subject.contains('@') && !subject.contains(':') {
            SanType::Rfc822Name(san)
        } else {
            SanType::URI(san)
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.use_authority_key_identifier_extension = true;
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(OID_ISSUER_V1, issuer.as_bytes().to_vec()),
            CustomExtension::from_oid_content(OID_ISSUER_V2, der_utf8_string(issuer)),
        ];
        // Fixed (from the key, itself random), so that the certificate signed with an SCT has the
        // TBSCertificate of the precertificate that the SCT signs, but for the SCT extension; positive.
        let mut serial = Sha256::digest(key.public_key_raw())[..16].to_vec();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        validity(&mut params);
        params
    }

    /// The CA certificate that signs the leaves.
    fn signer(&self) -> &CertifiedIssuer<'static, KeyPair> {
        self.intermediate.as_ref().unwrap_or(&self.root)
    }

    /// The TBSCertificate (DER) of `params` signed for `key`: the precertificate entry an SCT signs.
    fn precertificate_tbs(&self, params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
        let precertificate = params
            .signed_by(key, &**self.signer())
            .expect("sign the test precertificate");
        let (_, parsed) =
            X509Certificate::from_der(precertificate.der()).expect("parse the precertificate");
        parsed.tbs_certificate.as_ref().to_vec()
    }

    /// As [`TestCa::issue`], with `sct` in the leaf's embedded SCT list. The SCT signs RFC 6962's
    /// precertificate entry: the leaf's TBSCertificate without the SCT extension (issued first without
    /// it, then again with it appended as the last extension, all else equal) and the SHA-256 of the
    /// issuing CA's DER SubjectPublicKeyInfo.
    pub fn issue_with(&self, issuer: &str, subject: &str, sct: Sct<'_>) -> Leaf {
        let key = new_key();
        let mut params = TestCa::leaf_params(issuer, subject, &key);
        let (_, signer) = X509Certificate::from_der(self.signer().der()).expect("parse the CA");
        let issuer_key_hash: [u8; 32] =
            Sha256::digest(signer.tbs_certificate.subject_pki.raw).into();
        let sct = match sct {
            Sct::None => None,
            Sct::By(log) => Some(log.sct(
                log.log_id(),
                issuer_key_hash,
                &self.precertificate_tbs(&params, &key),
            )),
            Sct::Flipped(log) => {
                let mut sct = log.sct(
                    log.log_id(),
                    issuer_key_hash,
                    &self.precertificate_tbs(&params, &key),
                );
                // The last byte belongs to the signature's S integer.
                *sct.last_mut().unwrap() ^= 0x01;
                Some(sct)
            }
            Sct::Impersonating { named, signer } => Some(signer.sct(
                named.log_id(),
                issuer_key_hash,
                &self.precertificate_tbs(&params, &key),
            )),
            Sct::Grafted(log) => {
                let other_key = new_key();
                let other = TestCa::leaf_params(issuer, subject, &other_key);
                Some(log.sct(
                    log.log_id(),
                    issuer_key_hash,
                    &self.precertificate_tbs(&other, &other_key),
                ))
            }
        };
        if let Some(sct) = sct {
            let list = tls_vector(2, &tls_vector(2, &sct));
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_EMBEDDED_SCTS,
                    der(0x04, &list),
                ));
        }
        let cert = params
            .signed_by(&key, &**self.signer())
            .expect("sign the test leaf");

        let dir = tempfile::tempdir().expect("leaf directory");
        let leaf = Leaf {
            dir,
            cert_pem: cert.pem(),
            chain_pem: self.chain_pem(),
            root_pem: self.root_pem(),
            intermediate_pem: self.intermediate_pem(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            trusted_root: self.trusted_root_json(),
        };
        let write = |name: &str, text: &str| {
            std::fs::write(leaf.dir.path().join(name), text)
                .unwrap_or_else(|e| panic!("write {name}: {e}"))
        };
        write("cert.pem", &leaf.cert_pem);
        write("chain.pem", &leaf.chain_pem);
        write("root.pem", &leaf.root_pem);
        if let Some(intermediate) = &leaf.intermediate_pem {
            write("intermediate.pem", intermediate);
        }
        write("trusted_root.json", &leaf.trusted_root.to_string());
        // PKCS#8 ("PRIVATE KEY"), which `cosign import-key-pair` reads and re-encrypts in its own format.
        write("leaf.pem", &key.serialize_pem());
        let output = leaf
            .command()
            .args([
                "import-key-pair",
                "--yes",
                "--key",
                "leaf.pem",
                "--output-key-prefix",
                "import",
            ])
            .output()
            .expect("run cosign import-key-pair");
        assert_success("cosign import-key-pair", &output);
        assert!(
            leaf.private_key().exists() && leaf.public_key().exists(),
            "cosign import-key-pair wrote no import.key/import.pub in {}",
            leaf.key_dir().display()
        );
        leaf
    }
}

/// A leaf certificate with its key, in a directory of its own:
/// `cert.pem`, `chain.pem` (intermediate then root), `root.pem`, `leaf.pem` (the PKCS#8 key),
/// `import.key`/`import.pub` (cosign's encrypted form, password [`super::cosign::PASSWORD`]).
pub struct Leaf {
    dir: TempDir,
    cert_pem: String,
    chain_pem: String,
    root_pem: String,
    intermediate_pem: Option<String>,
    issuer: String,
    subject: String,
    /// The CA as a sigstore trusted root, without CT log.
    trusted_root: serde_json::Value,
}

impl Leaf {
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The OIDC issuer written in the Fulcio extensions.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The identity written in the SAN.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn key_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn chain_path(&self) -> PathBuf {
        self.dir.path().join("chain.pem")
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// cosign's encrypted private key.
    pub fn private_key(&self) -> PathBuf {
        self.dir.path().join("import.key")
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("import.pub")
    }

    /// cosign with its password, and its TUF cache and Docker credentials in this leaf's directory.
    pub fn command(&self) -> Command {
        command_in(self.dir.path())
    }

    /// Signs `image` with the leaf's key, attaching the leaf and the chain; panics with cosign's output
    /// on failure. Cosign checks that the certificate holds the key's public half and chains to the last
    /// certificate of `chain.pem` for code signing.
    pub fn sign(&self, image: &str, format: Format) {
        let command = sign_command(self.dir.path(), &self.private_key(), format);
        self.run_with_certificate(command, "sign", image);
    }

    /// Attests `image` with the leaf's key, attaching the leaf and the chain (`cosign attest --type
    /// <kind>`, offline); panics with cosign's output on failure.
    pub fn attest(&self, image: &str, kind: &str, predicate: &serde_json::Value, format: Format) {
        let key = self.private_key();
        let command = attest_command(self.dir.path(), &key, kind, predicate, format);
        self.run_with_certificate(command, "attest", image);
    }

    /// Runs cosign's `verb` on `image` with the leaf and the chain attached.
    fn run_with_certificate(&self, mut command: Command, verb: &str, image: &str) {
        let output = command
            .arg("--certificate")
            .arg(self.cert_path())
            .arg("--certificate-chain")
            .arg(self.chain_path())
            .arg(image)
            .output()
            .unwrap_or_else(|e| panic!("run cosign {verb}: {e}"));
        assert_success(
            &format!("cosign {verb} {image} with a certificate"),
            &output,
        );
    }

    /// `trusted_root.json`: the CA as a sigstore trusted root (see [`TestCa::trusted_root_json`]).
    pub fn trusted_root_path(&self) -> PathBuf {
        self.dir.path().join("trusted_root.json")
    }

    /// Runs `cosign verify` against this CA (no transparency log, no SCT) demanding `identity` and
    /// `issuer`; returns its output. A bundle is checked against `trusted_root.json` and needs
    /// `--allow-certificate-chain`, because cosign signs with `--certificate-chain` into an
    /// `x509CertificateChain`, which sigstore-go refuses in a v0.3 bundle by default (and cosign then
    /// silently falls back to looking for legacy signatures). A legacy signature is checked with
    /// `--ca-roots`/`--ca-intermediates`.
    pub fn verify(&self, image: &str, format: Format, identity: &str, issuer: &str) -> Output {
        self.verify_command(image, format, identity, issuer, None)
            .output()
            .expect("run cosign verify")
    }

    /// Runs `cosign verify` of this leaf's identity as [`Leaf::verify`] does, but with the embedded SCT
    /// checked against `ct_log`: its key in `SIGSTORE_CT_LOG_PUBLIC_KEY_FILE` (legacy signatures) and
    /// in the `ctlogs` of the trusted root (bundles).
    pub fn verify_sct(&self, image: &str, format: Format, ct_log: &TestCtLog) -> Output {
        self.verify_command(image, format, &self.subject, &self.issuer, Some(ct_log))
            .output()
            .expect("run cosign verify")
    }

    fn verify_command(
        &self,
        image: &str,
        format: Format,
        identity: &str,
        issuer: &str,
        ct_log: Option<&TestCtLog>,
    ) -> Command {
        let mut command = self.command();
        command.arg("verify");
        let trusted_root = match ct_log {
            None => self.trusted_root_path(),
            Some(log) => {
                let key = self.dir.path().join("ctlog.pub");
                std::fs::write(&key, log.public_key_pem()).expect("write ctlog.pub");
                command.env("SIGSTORE_CT_LOG_PUBLIC_KEY_FILE", key);
                let root = log.trusted_by(self.trusted_root.clone());
                let path = self.dir.path().join("trusted_root_ct.json");
                std::fs::write(&path, root.to_string()).expect("write trusted_root_ct.json");
                path
            }
        };
        command.args(self.verify_flags(image, format, identity, issuer, &trusted_root));
        command.arg(format!("--insecure-ignore-sct={}", ct_log.is_none()));
        command
    }

    /// `cosign verify`'s flags for `image` signed by this leaf in `format`, accepting `identity` from
    /// `issuer`, trusting the CA (`trusted_root` for bundles, `--ca-roots` for legacy signatures), with
    /// no transparency log. `registryx-guard verify` takes the same flags.
    pub fn verify_flags(
        &self,
        image: &str,
        format: Format,
        identity: &str,
        issuer: &str,
        trusted_root: &Path,
    ) -> Vec<std::ffi::OsString> {
        let mut flags: Vec<std::ffi::OsString> = Vec::new();
        match format {
            Format::Bundle => {
                flags.push("--trusted-root".into());
                flags.push(trusted_root.into());
                flags.push("--allow-certificate-chain".into());
            }
            Format::Legacy => {
                flags.push("--ca-roots".into());
                flags.push(self.root_path().into());
                if self.intermediate_pem.is_some() {
                    flags.push("--ca-intermediates".into());
                    flags.push(self.dir.path().join("intermediate.pem").into());
                }
            }
        }
        for flag in [
            "--certificate-identity",
            identity,
            "--certificate-oidc-issuer",
            issuer,
            "--insecure-ignore-tlog=true",
            &format!("--new-bundle-format={}", format == Format::Bundle),
            image,
        ] {
            flags.push(flag.into());
        }
        flags
    }
}
