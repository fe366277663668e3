//! AdmissionReview bodies as any caller may send them: decoded, and reviewed by an engine with no
//! policy (unmatched images are refused without a network call). Never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use registryx_guard::admission::{Admission, AdmissionSettings};
use registryx_guard::policy::{PolicySnapshot, shared};
use registryx_guard::verify::{Verifier, VerifierSettings};

fn engine() -> &'static (tokio::runtime::Runtime, Admission) {
    static ENGINE: OnceLock<(tokio::runtime::Runtime, Admission)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
        let admission = Admission::new(
            shared(PolicySnapshot::default()),
            verifier,
            None,
            AdmissionSettings::default(),
            None,
        );
        (runtime, admission)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(data) else {
        return;
    };
    let Ok(request): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return;
    };
    let (runtime, admission) = engine();
    let deadline = Instant::now() + Duration::from_millis(200);
    for mutate in [false, true] {
        let _ = runtime.block_on(admission.review(&request, deadline, mutate));
    }
});
