//! The Verifier's memory: its settings, the bounded caches (results, signature sets, tags, registry
//! clients) with their lifetimes, the counters read by metrics, invalidation on push events, and the
//! background renewal of verified results (stale-while-revalidate).
//!
//! A verified result is used for at most [`VerifierSettings::verified_max_age`] after the signatures it
//! rests on were read: that is the revocation bound when no push event arrives (a signature deleted
//! from the registry, a key revoked by re-signing). So that a busy image never waits for the registry,
//! a result older than [`VerifierSettings::revalidate_after`] is still used while one background task
//! reads its signatures again; the renewed result replaces it, a refusal included. Results nobody asks
//! for are not renewed: they expire, and cost the registry nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use tokio::sync::Semaphore;

use super::{AuthorityEvidence, SignatureSet, Verifier};
use crate::registry::{DockerConfig, RegistryClient, RegistryConfig, RegistryError};

/// Bytes of signature material the signature-set cache keeps (its entries live seconds).
const SIGNATURE_SETS_BYTES: u64 = 32 << 20;

/// Background renewals in flight at once; beyond, a result is not renewed early and is read again by
/// the first review after it expires (a flood of distinct images never becomes a flood of tasks).
pub(super) const MAX_REVALIDATIONS: usize = 64;

/// How long one background renewal may take.
pub(super) const REVALIDATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Cache lifetimes and sizes.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// The longest a verified result is used after its signatures were read: the revocation bound
    /// without push events.
    pub verified_max_age: Duration,
    /// A verified result older than this is renewed in the background on its next use (zero: never).
    pub revalidate_after: Duration,
    pub refused_ttl: Duration,
    /// How long one discovery is shared; short, it only coalesces concurrent lookups.
    pub signatures_ttl: Duration,
    pub max_cached_results: u64,
    /// Registry clients held at once; the least recently used beyond this is dropped.
    pub max_clients: u64,
    /// A registry client unused for this long is dropped.
    pub client_idle: Duration,
    /// How long a tag's digest is reused without asking the registry again (zero: never). Safe because
    /// admitted tags are pinned to the digest that was verified: a stale answer can only pin a pod to
    /// the digest the tag named up to this long ago, never let unverified bytes run. A RegistryX push
    /// event for the repository drops it at once.
    pub tag_ttl: Duration,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        VerifierSettings {
            verified_max_age: Duration::from_secs(30),
            revalidate_after: Duration::from_secs(15),
            refused_ttl: Duration::from_secs(30),
            signatures_ttl: Duration::from_secs(5),
            max_cached_results: 200_000,
            max_clients: 256,
            client_idle: Duration::from_secs(600),
            tag_ttl: Duration::from_secs(10),
        }
    }
}

pub(super) type EvidenceKey = (String, String);
/// `(registry/repository, how it is reached, digest, whether the `.att` tag is read too)`.
pub(super) type SetKey = (String, RegistryConfig, String, bool);
/// `(registry/repository, how it is reached, tag)`.
pub(super) type TagKey = (String, RegistryConfig, String);

/// A cached result, and when the read of the signatures it was judged on began.
#[derive(Clone)]
pub(super) struct Cached {
    pub evidence: Arc<AuthorityEvidence>,
    pub read_at: Instant,
}

/// One read of a digest's signatures, and when it began: what it found is at least that recent.
pub(super) struct Discovery {
    pub at: Instant,
    /// The Verifier's invalidation count when it began.
    pub generation: u64,
    pub found: Result<SignatureSet, RegistryError>,
}

pub(super) type SetCache = moka::future::Cache<SetKey, Arc<Discovery>>;
pub(super) type EvidenceCache = moka::future::Cache<EvidenceKey, Cached>;

/// Results live from the read of their signatures, not from their insertion: a renewal that read the
/// registry 3 s ago gives a result 3 s old.
struct EvidenceExpiry {
    verified: Duration,
    refused: Duration,
}

impl EvidenceExpiry {
    fn remaining(&self, value: &Cached, now: Instant) -> Duration {
        let lifetime = if value.evidence.verified() {
            self.verified
        } else {
            self.refused
        };
        lifetime.saturating_sub(now.saturating_duration_since(value.read_at))
    }
}

impl Expiry<EvidenceKey, Cached> for EvidenceExpiry {
    fn expire_after_create(
        &self,
        _key: &EvidenceKey,
        value: &Cached,
        now: Instant,
    ) -> Option<Duration> {
        Some(self.remaining(value, now))
    }

    fn expire_after_update(
        &self,
        _key: &EvidenceKey,
        value: &Cached,
        now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.remaining(value, now))
    }
}

/// Background renewals: one per result at a time, [`MAX_REVALIDATIONS`] at once, and what they did.
pub(super) struct Revalidations {
    pub in_flight: Mutex<HashSet<EvidenceKey>>,
    pub permits: Arc<Semaphore>,
    /// Renewals that kept the result verified.
    pub renewed: AtomicU64,
    /// Renewals that turned a verified result into a refusal (a signature gone, a key revoked).
    pub revoked: AtomicU64,
    /// Renewals the registry failed (the result is kept until it expires).
    pub failed: AtomicU64,
    /// Renewals not started because [`MAX_REVALIDATIONS`] were in flight.
    pub skipped: AtomicU64,
}

impl Revalidations {
    fn new() -> Revalidations {
        Revalidations {
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(MAX_REVALIDATIONS)),
            renewed: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }
}

/// What background renewal did so far, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevalidationStats {
    pub renewed: u64,
    pub revoked: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Verifier {
    pub fn new(settings: VerifierSettings, fallback_credentials: Option<DockerConfig>) -> Verifier {
        let evidence = moka::future::Cache::builder()
            .max_capacity(settings.max_cached_results)
            .support_invalidation_closures()
            .expire_after(EvidenceExpiry {
                verified: settings.verified_max_age,
                refused: settings.refused_ttl,
            })
            .build();
        let tags = moka::future::Cache::builder()
            .max_capacity(50_000)
            .time_to_live(settings.tag_ttl.max(Duration::from_millis(1)))
            .support_invalidation_closures()
            .build();
        // Weighed in bytes, not counted in entries: a set holds up to 32 signatures' material, and
        // 10,000 sets of a hostile registry's largest would not fit in the pod's memory.
        let signature_sets = moka::future::Cache::builder()
            .max_capacity(SIGNATURE_SETS_BYTES)
            .weigher(|_key, read: &Arc<Discovery>| -> u32 {
                let bytes = read.found.as_ref().map_or(256, SignatureSet::weight);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            // A shared read never outlives the bound of the results judged on it.
            .time_to_live(settings.signatures_ttl.min(settings.verified_max_age))
            .build();
        let evicted_requests = Arc::new(AtomicU64::new(0));
        let evicted = evicted_requests.clone();
        let clients = moka::sync::Cache::builder()
            .max_capacity(settings.max_clients)
            .time_to_idle(settings.client_idle)
            .eviction_listener(move |_key, client: Arc<RegistryClient>, _cause| {
                evicted.fetch_add(client.requests(), Ordering::Relaxed);
            })
            .build();
        Verifier {
            settings,
            clients,
            evicted_requests,
            signature_sets,
            tags,
            evidence,
            fallback_credentials,
            generation: Arc::new(AtomicU64::new(0)),
            revalidations: Arc::new(Revalidations::new()),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            registry_errors: AtomicU64::new(0),
            // Sweeps come at most five times a second; a listener that lags behind 64 is told so and
            // treats it as `All`.
            invalidations: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// The sweeps from now on (see [`super::Invalidated`]).
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<super::Invalidated> {
        self.invalidations.subscribe()
    }

    /// (hits, misses) of the result cache so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// What background renewal of verified results did so far.
    pub fn revalidation_stats(&self) -> RevalidationStats {
        let r = &self.revalidations;
        RevalidationStats {
            renewed: r.renewed.load(Ordering::Relaxed),
            revoked: r.revoked.load(Ordering::Relaxed),
            failed: r.failed.load(Ordering::Relaxed),
            skipped: r.skipped.load(Ordering::Relaxed),
        }
    }

    /// Signature reads that failed at the registry so far.
    pub fn registry_errors(&self) -> u64 {
        self.registry_errors.load(Ordering::Relaxed)
    }

    /// Registry requests sent so far, over all registries.
    pub fn registry_requests(&self) -> u64 {
        let live: u64 = self.clients.iter().map(|(_, c)| c.requests()).sum();
        live + self.evicted_requests.load(Ordering::Relaxed)
    }

    /// Registry clients held now (bounded by [`VerifierSettings::max_clients`]).
    pub fn client_count(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }

    /// Drops every cached result about `registry/repository` (a push notification's hint).
    pub fn invalidate_repository(&self, repository: &str) {
        self.invalidate_repositories(std::iter::once(repository.to_owned()).collect());
    }

    /// Drops every cached result about any of `repositories`, in one sweep of the cache (moka keeps
    /// each predicate until its sweep runs: one per batch, not one per event, keeps that bounded).
    pub fn invalidate_repositories(&self, repositories: std::collections::HashSet<String>) {
        // Entries are keyed `registry/repository@digest`; a notification names only the repository, so
        // every registry's copy of it is dropped (RegistryX also serves `x` as `library/x`).
        self.generation.fetch_add(1, Ordering::AcqRel);
        let wanted: std::collections::HashSet<String> = repositories
            .into_iter()
            .map(|r| r.trim_start_matches("library/").to_owned())
            .collect();
        // Told after the sweep, never before: a listener that re-checks at once must not read the
        // results being dropped. (No listener is no error: the audit runs on the Lease holder only.)
        let told = super::Invalidated::Repositories(wanted.iter().cloned().collect());
        let wanted_tags = wanted.clone();
        let result = self.evidence.invalidate_entries_if(move |key, _| {
            let name = key.0.split('@').next().unwrap_or_default();
            let path = name.split_once('/').map(|(_, path)| path).unwrap_or(name);
            wanted.contains(path.trim_start_matches("library/"))
        });
        if let Err(error) = result {
            tracing::warn!(%error, "cannot invalidate cached results; dropping them all");
            self.evidence.invalidate_all();
        }
        // Tags of those repositories may name new digests now: ask the registry again.
        let tag_names = wanted_tags;
        if self
            .tags
            .invalidate_entries_if(move |key, _| {
                let path = key
                    .0
                    .split_once('/')
                    .map(|(_, path)| path)
                    .unwrap_or(&key.0);
                tag_names.contains(path.trim_start_matches("library/"))
            })
            .is_err()
        {
            self.tags.invalidate_all();
        }
        self.signature_sets.invalidate_all();
        let _ = self.invalidations.send(told);
    }

    /// Drops every cached result.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.evidence.invalidate_all();
        self.tags.invalidate_all();
        self.signature_sets.invalidate_all();
        let _ = self.invalidations.send(super::Invalidated::All);
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }
}
