//! The Verifier's memory: its settings, the bounded caches (results, signature sets, tags, registry
//! clients) with their lifetimes, the counters read by metrics, and invalidation on push events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::Expiry;

use super::{AuthorityEvidence, SignatureSet, Verifier};
use crate::registry::{DockerConfig, RegistryClient, RegistryConfig, RegistryError};

/// Bytes of signature material the signature-set cache keeps (its entries live seconds).
const SIGNATURE_SETS_BYTES: u64 = 32 << 20;

/// Cache lifetimes and sizes.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    pub verified_ttl: Duration,
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
            verified_ttl: Duration::from_secs(600),
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
pub(super) type SetKey = (String, RegistryConfig, String);
/// `(registry/repository, how it is reached, tag)`.
pub(super) type TagKey = (String, RegistryConfig, String);

struct EvidenceExpiry {
    verified: Duration,
    refused: Duration,
}

impl Expiry<EvidenceKey, Arc<AuthorityEvidence>> for EvidenceExpiry {
    fn expire_after_create(
        &self,
        _key: &EvidenceKey,
        value: &Arc<AuthorityEvidence>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(if value.verified() {
            self.verified
        } else {
            self.refused
        })
    }
}

impl Verifier {
    pub fn new(settings: VerifierSettings, fallback_credentials: Option<DockerConfig>) -> Verifier {
        let evidence = moka::future::Cache::builder()
            .max_capacity(settings.max_cached_results)
            .support_invalidation_closures()
            .expire_after(EvidenceExpiry {
                verified: settings.verified_ttl,
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
            .weigher(
                |_key, set: &Arc<Result<SignatureSet, RegistryError>>| -> u32 {
                    let bytes = set.as_ref().as_ref().map_or(256, SignatureSet::weight);
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                },
            )
            .time_to_live(settings.signatures_ttl)
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
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            registry_errors: AtomicU64::new(0),
        }
    }

    /// (hits, misses) of the result cache so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
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
        let wanted: std::collections::HashSet<String> = repositories
            .into_iter()
            .map(|r| r.trim_start_matches("library/").to_owned())
            .collect();
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
    }

    /// Drops every cached result.
    pub fn invalidate_all(&self) {
        self.evidence.invalidate_all();
        self.tags.invalidate_all();
        self.signature_sets.invalidate_all();
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }
}
