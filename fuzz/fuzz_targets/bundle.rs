//! sigstore bundles (JSON, DSSE envelopes, transparency-log entries and their inclusion data) as a
//! registry may serve them as referrers, checked offline against every kind of authority.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registryx_guard::verify::fuzzing::{Authorities, check_bundle};

fuzz_target!(|data: &[u8]| {
    for authority in Authorities::get().all() {
        let verified = check_bundle(authority, data);
        assert!(verified.is_err(), "a forged bundle verified");
    }
});
