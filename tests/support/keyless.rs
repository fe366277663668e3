//! A test certificate authority for "keyless"-style signatures without Fulcio: it issues short-lived
//! leaves that look like Fulcio's (code-signing EKU, the identity in the SAN, the OIDC issuer in
//! Sigstore's extensions), and real cosign signs with them through `--certificate`. Nothing goes to
//! Fulcio, Rekor or a CT log, so these signatures carry neither SCT nor transparency-log entry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

use super::cosign::{Format, assert_success, command_in, sign_command};

/// Fulcio's "Issuer (V1)" extension: the OIDC issuer as raw string bytes (deprecated, still read).
pub const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
/// Fulcio's "Issuer (V2)" extension: the OIDC issuer as a DER UTF8String.
pub const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

/// Every certificate here is valid from an hour ago to a day ahead: already valid whatever the clock
/// skew between the test and the tools, and never expiring during a run. Cosign checks the chain at the
/// leaf's `notBefore`, so a CA made before the leaf always covers it.
fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(1);
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

/// The DER encoding of a UTF8String (tag 12), as Fulcio writes its V2 extensions.
fn der_utf8_string(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut der = vec![0x0c];
    match bytes.len() {
        len @ 0..=0x7f => der.push(len as u8),
        len @ 0x80..=0xff => der.extend([0x81, len as u8]),
        len @ 0x100..=0xffff => der.extend([0x82, (len >> 8) as u8, len as u8]),
        len => panic!("issuer of {len} bytes is too long for a test certificate"),
    }
    der.extend_from_slice(bytes);
    der
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
        let start = (OffsetDateTime::now_utc() - Duration::days(1))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 time");
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [],
            "certificateAuthorities": [{
                "subject": {"organization": "registryx-guard tests", "commonName": self.name},
                "uri": "https://fulcio.registryx-guard.test",
                "certChain": {"certificates": certificates},
                "validFor": {"start": start},
            }],
            "ctlogs": [],
            "timestampAuthorities": [],
        })
    }

    /// Issues a Fulcio-style leaf for `subject` (a URI such as
    /// `https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main`, or an email address)
    /// as if `issuer` (an OIDC issuer URL) had vouched for it, and prepares cosign to sign with it.
    pub fn issue(&self, issuer: &str, subject: &str) -> Leaf {
        let key = new_key();
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
        validity(&mut params);
        let signer = self.intermediate.as_ref().unwrap_or(&self.root);
        let cert = params
            .signed_by(&key, &**signer)
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
        write("trusted_root.json", &self.trusted_root_json().to_string());
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
        let output = sign_command(self.dir.path(), &self.private_key(), format)
            .arg("--certificate")
            .arg(self.cert_path())
            .arg("--certificate-chain")
            .arg(self.chain_path())
            .arg(image)
            .output()
            .expect("run cosign sign");
        assert_success(&format!("cosign sign {image} with a certificate"), &output);
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
        let mut command = self.command();
        command.arg("verify");
        match format {
            Format::Bundle => {
                command
                    .arg("--trusted-root")
                    .arg(self.trusted_root_path())
                    .arg("--allow-certificate-chain");
            }
            Format::Legacy => {
                command.arg("--ca-roots").arg(self.root_path());
                if self.intermediate_pem.is_some() {
                    command
                        .arg("--ca-intermediates")
                        .arg(self.dir.path().join("intermediate.pem"));
                }
            }
        }
        command
            .args(["--certificate-identity", identity])
            .args(["--certificate-oidc-issuer", issuer])
            .args(["--insecure-ignore-sct=true", "--insecure-ignore-tlog=true"])
            .arg(format!("--new-bundle-format={}", format == Format::Bundle))
            .arg(image)
            .output()
            .expect("run cosign verify")
    }
}
