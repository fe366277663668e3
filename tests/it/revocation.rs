//! Revocation without push events: a verified result is used at most `verified_max_age` after its
//! signatures were read, a busy one is renewed in the background before that (stale-while-revalidate),
//! and an idle one is left to expire at no cost to the registry.

use std::time::{Duration, Instant};

use registryx_guard::refusal::Reason;
use registryx_guard::verify::{Verifier, VerifierSettings};

use crate::support::verdicts::{
    BUDGET, assert_admitted, assert_refused, key_policy, legacy_signed_image, signature_tag,
    verify_with,
};

/// Short lifetimes, so that a test sees several renewals within seconds.
fn short_lived() -> Verifier {
    Verifier::new(
        VerifierSettings {
            verified_max_age: Duration::from_millis(2000),
            revalidate_after: Duration::from_millis(500),
            ..VerifierSettings::default()
        },
        None,
    )
}

#[tokio::test]
async fn a_busy_verified_image_is_renewed_in_the_background_and_never_waits_for_the_registry() {
    let (registry, cosign, image) = legacy_signed_image("renewed").await;
    let policy = key_policy(&registry.host, &cosign);
    let verifier = short_lived();
    for reference in [image.by_digest(), image.reference.clone()] {
        assert_admitted(&verify_with(&verifier, &reference, &policy, BUDGET).await);
    }
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy, BUDGET).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, misses) = verifier.cache_stats();
    let stats = verifier.revalidation_stats();
    assert_eq!(
        misses, 1,
        "a review waited for the registry although the result was renewed: {stats:?}"
    );
    assert!(
        stats.renewed >= 3,
        "4.5 s of use renewed a 2 s result {stats:?} times"
    );
    assert_eq!((stats.revoked, stats.failed), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_deleted_signature_stops_admitting_within_the_bound_without_an_event() {
    let (registry, cosign, image) = legacy_signed_image("revoked").await;
    let policy = key_policy(&registry.host, &cosign);
    let (busy, idle) = (short_lived(), short_lived());
    for verifier in [&busy, &idle] {
        assert_admitted(&verify_with(verifier, &image.by_digest(), &policy, BUDGET).await);
        assert_admitted(&verify_with(verifier, &image.reference, &policy, BUDGET).await);
    }
    registry
        .delete_manifest("team/app", &signature_tag(&image.digest))
        .await;
    let deleted = Instant::now();

    // Used all along: the background renewal reads the registry again and turns the result into a
    // refusal, well before the bound.
    let revoked_after = loop {
        let verdict = verify_with(&busy, &image.by_digest(), &policy, BUDGET).await;
        if !verdict.admitted() {
            assert_refused(&verdict, Reason::NoSignature);
            break deleted.elapsed();
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "still admitted 10 s after its signature was deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("revoked by a renewal {revoked_after:?} after the deletion");
    assert_eq!(busy.revalidation_stats().revoked, 1);

    // Never used meanwhile: once the bound has passed, the result is gone, by digest and by tag.
    let bound = Duration::from_millis(2000);
    tokio::time::sleep(bound.saturating_sub(deleted.elapsed()) + Duration::from_millis(100)).await;
    for reference in [image.by_digest(), image.reference.clone()] {
        let verdict = verify_with(&idle, &reference, &policy, BUDGET).await;
        assert_refused(&verdict, Reason::NoSignature);
    }
    assert_eq!(
        idle.revalidation_stats().renewed + idle.revalidation_stats().revoked,
        0
    );
}

#[tokio::test]
async fn an_idle_result_is_not_renewed_and_costs_the_registry_nothing() {
    let (registry, cosign, image) = legacy_signed_image("idle").await;
    let policy = key_policy(&registry.host, &cosign);
    let verifier = short_lived();
    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy, BUDGET).await);
    let requests = verifier.registry_requests();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(verifier.registry_requests(), requests);
    assert_eq!(verifier.revalidation_stats(), Default::default());
    // Expired: the next review reads the registry itself.
    assert_admitted(&verify_with(&verifier, &image.by_digest(), &policy, BUDGET).await);
    assert_eq!(verifier.cache_stats(), (0, 2));
}
