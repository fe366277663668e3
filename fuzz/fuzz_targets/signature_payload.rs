//! cosign's legacy signatures: the simple-signing payload, the signature, the certificate and the
//! Rekor bundle (SET and entry) as a registry may serve them, checked offline against a key, a key with
//! a required transparency log and a keyless authority. Never a panic, never a verified forgery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registryx_guard::verify::fuzzing::{Authorities, check_legacy};

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xFF: payload, signature, certificate, Rekor bundle.
    let mut parts = data.split(|b| *b == 0xFF);
    let payload = parts.next().unwrap_or_default();
    let text = |part: Option<&[u8]>| part.map(|p| String::from_utf8_lossy(p).into_owned());
    let signature = text(parts.next()).unwrap_or_default();
    let certificate = text(parts.next()).filter(|c| !c.is_empty());
    let rekor_bundle = text(parts.next()).filter(|r| !r.is_empty());
    for authority in Authorities::get().all() {
        let verified = check_legacy(authority, payload, &signature, certificate.clone(), rekor_bundle.clone());
        // The fuzzer holds none of the private keys: nothing it makes may verify.
        assert!(verified.is_err(), "a forged signature verified");
    }
});
