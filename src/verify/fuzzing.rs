//! Entry points for the cargo-fuzz targets of `fuzz/`: the offline signature checks, fed with bytes as a
//! registry may serve them. Not an API: the targets need the private parsers, nothing else does.

use std::sync::OnceLock;

use super::check::{Proof, check};
use super::signatures::{BundleSignature, FoundSignature, LegacySignature};
use crate::policy::authority::{CompiledAuthority, NoSecrets};

/// The digest every fuzzed signature claims to be about.
pub const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The authorities of `fuzz/policy.yaml`: a key, a key with a required Rekor entry, and a keyless
/// identity under a private Fulcio CA.
pub struct Authorities(Vec<CompiledAuthority>);

impl Authorities {
    /// Compiled once per process.
    pub fn get() -> &'static Authorities {
        static AUTHORITIES: OnceLock<Authorities> = OnceLock::new();
        AUTHORITIES.get_or_init(|| {
            let policy = serde_yaml::from_str(include_str!("../../fuzz/policy.yaml"))
                .expect("fuzz/policy.yaml parses");
            let compiled = crate::policy::compile(&policy, &NoSecrets, "registryx-guard")
                .expect("fuzz/policy.yaml compiles");
            Authorities(compiled.authorities)
        })
    }

    pub fn all(&self) -> &[CompiledAuthority] {
        &self.0
    }
}

/// Checks a legacy `.sig` layer made of these parts against `authority`.
pub fn check_legacy(
    authority: &CompiledAuthority,
    payload: &[u8],
    signature: &str,
    certificate: Option<String>,
    rekor_bundle: Option<String>,
) -> Result<Proof, String> {
    let signature = FoundSignature::Legacy(LegacySignature {
        layer_digest: DIGEST.to_owned(),
        payload: payload.to_vec(),
        signature: signature.to_owned(),
        certificate,
        chain: None,
        rekor_bundle,
    });
    check(authority, DIGEST, &signature).map_err(|failure| failure.message)
}

/// Checks a sigstore bundle of these bytes against `authority`.
pub fn check_bundle(authority: &CompiledAuthority, bundle: &[u8]) -> Result<Proof, String> {
    let signature = FoundSignature::Bundle(BundleSignature {
        manifest_digest: DIGEST.to_owned(),
        bundle: bundle.to_vec(),
    });
    check(authority, DIGEST, &signature).map_err(|failure| failure.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_policy_compiles_and_garbage_never_verifies() {
        let authorities = Authorities::get().all();
        assert_eq!(authorities.len(), 3);
        for authority in authorities {
            assert!(check_legacy(authority, b"{}", "AAAA", None, None).is_err());
            assert!(check_bundle(authority, b"{\"mediaType\":1}").is_err());
        }
    }
}
