//! `cosign verify`'s own flags on `registryx-guard verify`, so that the command of RegistryX's signing
//! guide works by replacing `cosign` with `registryx-guard`: `--key cosign.pub IMAGE`, or
//! `--certificate-identity ... --certificate-oidc-issuer ... IMAGE`. The flags become one
//! ImageSigningPolicy that governs exactly the images named, decided as any policy file is; the
//! cosign defaults are kept where they decide something: the transparency-log entry is required unless
//! `--insecure-ignore-tlog`, embedded SCTs are checked whenever a CT log key is known unless
//! `--insecure-ignore-sct`, and registries on loopback, `localhost` or private addresses are spoken
//! to in plain HTTP as go-containerregistry (cosign's registry client) does.
//!
//! What cosign fetches from the network and this command does not: Sigstore's public-good trust root
//! (TUF). Its parts are given as cosign also takes them offline: `--trusted-root` (a
//! `trusted_root.json`, e.g. from `cosign trusted-root create`), `--ca-roots`, and the
//! `SIGSTORE_REKOR_PUBLIC_KEY` / `SIGSTORE_CT_LOG_PUBLIC_KEY_FILE` files.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{ArgAction, Args};

use crate::policy::ImageSigningPolicy;
use crate::registry::ImageRef;

/// The name of the policy the flags make (shown in decisions as any policy's name).
pub const FLAGS_POLICY: &str = "command-line";

/// cosign verify's flags, as cosign spells them.
#[derive(Args, Debug, Default, Clone)]
pub struct CosignFlags {
    /// cosign: the public key (PEM file, e.g. `cosign.pub`) the signature must verify with.
    #[arg(long, env = "RXG_KEY")]
    pub key: Option<PathBuf>,

    /// cosign: the keyless signer's identity (the certificate's SAN), exactly.
    #[arg(long, conflicts_with = "key")]
    pub certificate_identity: Option<String>,

    /// cosign: the keyless signer's identity as a regular expression.
    #[arg(long, conflicts_with_all = ["key", "certificate_identity"])]
    pub certificate_identity_regexp: Option<String>,

    /// cosign: the OIDC issuer of the keyless certificate, exactly.
    #[arg(long, conflicts_with = "key")]
    pub certificate_oidc_issuer: Option<String>,

    /// cosign: the OIDC issuer as a regular expression.
    #[arg(long, conflicts_with_all = ["key", "certificate_oidc_issuer"])]
    pub certificate_oidc_issuer_regexp: Option<String>,

    /// cosign: a sigstore trusted_root.json (Fulcio CAs, Rekor and CT log keys), as
    /// `cosign trusted-root create` writes it.
    #[arg(long)]
    pub trusted_root: Option<PathBuf>,

    /// cosign: PEM file of the Fulcio CA root certificates, for keyless without a trusted root.
    #[arg(long, conflicts_with = "trusted_root")]
    pub ca_roots: Option<PathBuf>,

    /// cosign: PEM file of the Fulcio CA's intermediate certificates (with --ca-roots).
    #[arg(long, requires = "ca_roots")]
    pub ca_intermediates: Option<PathBuf>,

    /// cosign: accepted for its scripts; a bundle's certificate chain is always checked up to the
    /// trusted root.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub allow_certificate_chain: bool,

    /// cosign: accepted for its scripts; both signature formats (legacy `.sig` and sigstore bundles
    /// among the referrers) are always read.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub new_bundle_format: Option<bool>,

    /// cosign: accepted for its scripts; verification here is always offline.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub offline: Option<bool>,

    /// cosign: do not require the signature's transparency-log (Rekor) entry.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub insecure_ignore_tlog: bool,

    /// cosign: do not check the keyless certificate's embedded SCT.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub insecure_ignore_sct: bool,

    /// cosign: speak plain HTTP to the registry.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub allow_http_registry: bool,

    /// cosign: allow an insecure registry. Here it means plain HTTP, as --allow-http-registry: a TLS
    /// certificate is always checked (give a policy file with registry.caBundle for a private CA).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub allow_insecure_registry: bool,
}

impl CosignFlags {
    /// Whether any flag asks for a signer (then a policy file is optional).
    pub fn name_a_signer(&self) -> bool {
        self.key.is_some() || self.keyless()
    }

    fn keyless(&self) -> bool {
        self.certificate_identity.is_some() || self.certificate_identity_regexp.is_some()
    }

    /// The policy these flags make for `images`, or `None` when they name no signer. Errors are the
    /// command's input errors (exit 2), each saying which flag to give.
    ///
    /// `public_good` gives Sigstore's public-good `trusted_root.json`; it is called only when the flags
    /// need what cosign would take from it and name nothing else.
    pub fn policy(
        &self,
        images: &[ImageRef],
        public_good: &dyn Fn() -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<ImageSigningPolicy>> {
        if !self.name_a_signer() {
            anyhow::ensure!(
                self.certificate_oidc_issuer.is_none()
                    && self.certificate_oidc_issuer_regexp.is_none(),
                "--certificate-oidc-issuer needs --certificate-identity or --certificate-identity-regexp"
            );
            return Ok(None);
        }
        let trusted_root = match &self.trusted_root {
            Some(path) => Some(read(path, "--trusted-root")?),
            None => None,
        };
        let rekor_key = env_file("SIGSTORE_REKOR_PUBLIC_KEY")?;
        let ct_log_key = env_file("SIGSTORE_CT_LOG_PUBLIC_KEY_FILE")?;
        let tlog_required = !self.insecure_ignore_tlog;

        let mut authority =
            serde_json::json!({ "name": if self.keyless() { "keyless" } else { "key" } });
        if let Some(path) = &self.key {
            authority["key"] = serde_json::json!({ "data": read(path, "--key")? });
            let rekor_key = match (&rekor_key, &trusted_root) {
                (Some(pem), _) => Some(pem.clone()),
                (None, Some(json)) => Some(first_rekor_key(json)?),
                (None, None) if tlog_required => {
                    let json = public_good().map_err(|e| {
                        anyhow::anyhow!(
                            "cosign checks the signature's transparency-log entry against Sigstore's \
                             public Rekor key, and fetching Sigstore's public-good roots failed ({e:#}): \
                             give --trusted-root FILE or SIGSTORE_REKOR_PUBLIC_KEY=FILE, or \
                             --insecure-ignore-tlog for signatures made with --tlog-upload=false"
                        )
                    })?;
                    Some(first_rekor_key(&json)?)
                }
                (None, None) => None,
            };
            authority["transparencyLog"] =
                serde_json::json!({ "required": tlog_required, "rekorKey": rekor_key });
        } else {
            let issuer = match (
                &self.certificate_oidc_issuer,
                &self.certificate_oidc_issuer_regexp,
            ) {
                (Some(exact), _) => serde_json::json!({ "issuer": exact }),
                (None, Some(pattern)) => serde_json::json!({ "issuerRegExp": pattern }),
                (None, None) => anyhow::bail!(
                    "keyless verification needs --certificate-oidc-issuer or \
                     --certificate-oidc-issuer-regexp, as cosign does"
                ),
            };
            let mut identity = issuer;
            match (
                &self.certificate_identity,
                &self.certificate_identity_regexp,
            ) {
                (Some(exact), _) => identity["subject"] = exact.clone().into(),
                (None, Some(pattern)) => identity["subjectRegExp"] = pattern.clone().into(),
                (None, None) => anyhow::bail!(
                    "keyless verification needs --certificate-identity or \
                     --certificate-identity-regexp"
                ),
            }
            let mut trust_root = match (&trusted_root, &self.ca_roots) {
                (Some(json), _) => serde_json::json!({ "trustedRootJSON": json }),
                (None, Some(path)) => {
                    // Intermediates first, root last: the order trustRoot.fulcioCA takes.
                    let mut chain = match &self.ca_intermediates {
                        Some(path) => read(path, "--ca-intermediates")?,
                        None => String::new(),
                    };
                    if !chain.is_empty() && !chain.ends_with('\n') {
                        chain.push('\n');
                    }
                    chain.push_str(&read(path, "--ca-roots")?);
                    serde_json::json!({ "fulcioCA": chain })
                }
                (None, None) => {
                    let json = public_good().map_err(|e| {
                        anyhow::anyhow!(
                            "keyless verification needs a trust root, and fetching Sigstore's \
                             public-good roots failed ({e:#}): give --trusted-root FILE (`cosign \
                             trusted-root create`) or --ca-roots FILE"
                        )
                    })?;
                    serde_json::json!({ "trustedRootJSON": json })
                }
            };
            if let Some(pem) = &rekor_key {
                trust_root["rekorKey"] = pem.clone().into();
            }
            if let Some(pem) = &ct_log_key {
                trust_root["ctLogKey"] = pem.clone().into();
            }
            authority["keyless"] =
                serde_json::json!({ "identities": [identity], "trustRoot": trust_root });
            if self.insecure_ignore_sct {
                authority["keyless"]["ctLog"] = serde_json::json!({ "required": false });
            }
            authority["transparencyLog"] = serde_json::json!({ "required": tlog_required });
        }
        let globs: Vec<String> = images
            .iter()
            .map(|image| format!("{}/{}", image.registry, image.repository))
            .collect();
        let insecure = self.allow_http_registry
            || self.allow_insecure_registry
            || images
                .iter()
                .all(|image| plain_http_by_default(&image.registry));
        let policy = serde_json::json!({
            "apiVersion": "registryx.io/v1alpha1",
            "kind": "ImageSigningPolicy",
            "metadata": { "name": FLAGS_POLICY },
            "spec": {
                "images": globs,
                "authorities": [authority],
                "registry": { "insecure": insecure },
            },
        });
        Ok(Some(
            serde_json::from_value(policy).context("the flags make no valid policy")?,
        ))
    }
}

/// go-containerregistry's rule for when a registry is spoken to in plain HTTP without being told:
/// `localhost`, loopback and private (RFC 1918) addresses, as cosign does for `localhost:5000`.
fn plain_http_by_default(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

/// The PEM in the file an environment variable names, as cosign reads these variables.
fn env_file(variable: &str) -> anyhow::Result<Option<String>> {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => read(Path::new(&path), variable).map(Some),
        _ => Ok(None),
    }
}

/// The first Rekor key of a trusted_root.json (`tlogs[].publicKey.rawBytes`, DER) as PEM.
fn first_rekor_key(trusted_root: &str) -> anyhow::Result<String> {
    let root: serde_json::Value =
        serde_json::from_str(trusted_root).context("--trusted-root is not JSON")?;
    let raw = root["tlogs"]
        .as_array()
        .and_then(|logs| {
            logs.iter()
                .find_map(|log| log["publicKey"]["rawBytes"].as_str())
        })
        .context("--trusted-root names no transparency log (tlogs[].publicKey.rawBytes)")?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .context("--trusted-root: a tlog key is not base64")?;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap_or_default())
        .collect();
    Ok(format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_spoken_to_in_plain_http_by_default() {
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "10.0.0.7:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(plain_http_by_default(host), "{host}");
        }
        for host in [
            "registry.example.com",
            "8.8.8.8:5000",
            "localhost.example.com:5000",
        ] {
            assert!(!plain_http_by_default(host), "{host}");
        }
    }

    #[test]
    fn a_key_without_a_rekor_key_needs_insecure_ignore_tlog() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cosign.pub");
        std::fs::write(
            &key,
            "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let image = ImageRef::parse("localhost:5000/demo/alpine:latest").unwrap();
        let flags = CosignFlags {
            key: Some(key),
            ..CosignFlags::default()
        };
        let error = flags
            .policy(std::slice::from_ref(&image), &|| anyhow::bail!("offline"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--insecure-ignore-tlog"), "{error}");
        let flags = CosignFlags {
            insecure_ignore_tlog: true,
            ..flags
        };
        let policy = flags
            .policy(&[image], &|| anyhow::bail!("offline"))
            .unwrap()
            .unwrap();
        assert_eq!(policy.spec.images, ["localhost:5000/demo/alpine"]);
        assert!(policy.spec.registry.unwrap().insecure);
    }
}
