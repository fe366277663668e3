//! Signature verification: for one image and the policies that govern it, find the image's signatures
//! once, check every authority of every policy against them, and return evidence, not a boolean.
//!
//! Results are cached by (image digest, authority fingerprint): verified ones at most a bounded time
//! after their signatures were read, renewed in the background while in use (see `cache`), refusals
//! for a short time, so that a freshly signed image is admitted soon after. Concurrent lookups of one
//! image share one signature fetch. An image that no policy governs is never looked up at all.

/// Where the compiled authorities live: the policy layer compiles them, this one only checks with them.
pub use crate::policy::authority;
mod bundle;
mod cache;
mod check;
#[doc(hidden)]
pub mod fuzzing;
mod report;
mod sct;
mod signatures;
mod verdict;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;

use cache::{
    Cached, Discovery, EvidenceCache, EvidenceKey, REVALIDATION_TIMEOUT, Revalidations, SetCache,
    TagKey,
};
pub use cache::{RevalidationStats, VerifierSettings};
pub use check::Proof;
pub use report::render_text;
pub use signatures::{FoundSignature, SignatureSet};
pub use verdict::{AuthorityEvidence, ImageVerdict, Outcome, PolicyFailure, PolicyVerdict};

use crate::policy::authority::{CompiledAuthority, Trust};
use crate::policy::{CompiledPolicy, MultiArch};
use crate::refusal::{About, Failure, Reason, Signing};
use crate::registry::{
    DockerConfig, ImageRef, RegistryClient, RegistryConfig, RegistryError, Step,
};

/// How old a cached refusal the mutating webhook accepts.
pub const RECHECKED_REFUSAL_AGE: Duration = Duration::from_secs(1);

/// What a caller accepts from the result cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Any cached result (validation, the command line).
    Cached,
    /// Verified results as cached; refusals only if their signatures were read within
    /// [`RECHECKED_REFUSAL_AGE`], otherwise read again (one read per image per second at most). The
    /// mutating webhook asks this: a replica that cached a refusal before the image was signed must
    /// not leave a tag unpinned that the validating replica, which may be another one, verifies fresh
    /// and would then refuse as unpinned.
    RecheckRefusals,
}

impl Freshness {
    fn accepts_refusal(self, age: Duration) -> bool {
        match self {
            Freshness::Cached => true,
            Freshness::RecheckRefusals => age <= RECHECKED_REFUSAL_AGE,
        }
    }
}

/// The verification engine, shared by all requests.
pub struct Verifier {
    settings: VerifierSettings,
    /// One client (connection pool, token cache, request permits) per registry and configuration;
    /// bounded and evicted when idle, so that pods naming thousands of registries cannot grow it.
    clients: moka::sync::Cache<(String, RegistryConfig), Arc<RegistryClient>>,
    /// Requests of clients that were evicted, so that the total never goes back.
    evicted_requests: Arc<AtomicU64>,
    signature_sets: SetCache,
    /// Tag resolutions, shared by concurrent lookups of one tag and kept [`VerifierSettings::tag_ttl`].
    tags: moka::future::Cache<TagKey, crate::registry::Resolved>,
    evidence: EvidenceCache,
    /// Moves on every invalidation: a read that began before one is not cached after it (a push event
    /// arriving while a renewal or a lookup reads the registry must not be undone by it).
    generation: Arc<AtomicU64>,
    revalidations: Arc<Revalidations>,
    fallback_credentials: Option<DockerConfig>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    registry_errors: AtomicU64,
    /// Tells the background audit which repositories changed (a push event, here or on another
    /// replica), so that it re-checks their images: a broadcast, as no listener must slow a sweep.
    invalidations: tokio::sync::broadcast::Sender<Invalidated>,
}

/// What a cache sweep dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidated {
    /// Every cached result about these repositories (`path`, without the registry: a push event names
    /// only the repository).
    Repositories(Vec<String>),
    /// Every cached result.
    All,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Verifies the signatures of `image` against `policies` (those that govern it). No policy, no
    /// network call. Rego rules are not this stage's: `decide` runs them on this verdict.
    pub async fn verify(
        &self,
        image: &ImageRef,
        policies: &[Arc<CompiledPolicy>],
        freshness: Freshness,
        deadline: Instant,
    ) -> ImageVerdict {
        let mut verdict = ImageVerdict {
            image: image.to_string(),
            digest: image.digest.clone(),
            policies: Vec::new(),
        };
        let Some(first) = policies.first() else {
            return verdict;
        };
        // Policies that govern one image reach one registry; the first one's access resolves the tag.
        let resolved = match self.client(image, first) {
            Ok(client) => self.resolve(&client, image, deadline).await,
            Err(error) => Err(Arc::new(error)),
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(error) => {
                let reason = format!("cannot resolve {image} to a digest: {error}");
                let kind = Reason::of_image_read(error.as_ref());
                verdict.policies = policies
                    .iter()
                    .map(|p| failed(p, reason.clone(), kind, &image.registry))
                    .collect();
                return verdict;
            }
        };
        verdict.digest = Some(resolved.digest.clone());
        verdict.policies = join_all(
            policies
                .iter()
                .map(|policy| self.verify_policy(image, &resolved, policy, freshness, deadline)),
        )
        .await;
        verdict
    }

    async fn verify_policy(
        &self,
        image: &ImageRef,
        resolved: &crate::registry::Resolved,
        policy: &CompiledPolicy,
        freshness: Freshness,
        deadline: Instant,
    ) -> PolicyVerdict {
        let client = match self.client(image, policy) {
            Ok(client) => client,
            Err(error) => {
                let kind = Reason::of_registry_error(&error);
                return failed(policy, error.to_string(), kind, &image.registry);
            }
        };
        let mut digests = vec![resolved.digest.clone()];
        if policy.multi_arch == MultiArch::EveryPlatform {
            match platform_digests(&client, image, resolved, deadline).await {
                Ok(platforms) => digests.extend(platforms),
                Err(error) => {
                    let kind = Reason::of_image_read(&error);
                    return failed(
                        policy,
                        format!("cannot list the platforms of {image}: {error}"),
                        kind,
                        &image.registry,
                    );
                }
            }
        }
        let per_digest = join_all(digests.iter().map(|digest| {
            let client = client.clone();
            async move {
                join_all(policy.authorities.iter().map(|authority| {
                    self.evidence_for(&client, image, digest, authority, freshness, deadline)
                }))
                .await
            }
        }))
        .await;

        let mut verdict = PolicyVerdict {
            policy: policy.name.clone(),
            policy_uid: policy.uid.clone(),
            mode: policy.mode,
            authorities: Vec::new(),
            failure: None,
            rego_input: None,
            evidence_complete: true,
        };
        for (digest, evidence) in digests.iter().zip(per_digest) {
            let verified = evidence.iter().any(|e| e.verified());
            if policy.signature_required && !verified {
                let mut messages = Vec::new();
                if evidence.is_empty() {
                    messages.push(format!("{digest}: the policy names no authority"));
                }
                let failures = evidence
                    .iter()
                    .filter_map(|e| Some((&e.authority, e.failure()?)));
                for (authority, failure) in failures.clone() {
                    messages.push(format!("authority {authority}: {}", failure.message));
                }
                let reason = Reason::most_telling(failures.map(|(_, f)| f.reason))
                    .unwrap_or(Reason::NoSignature);
                let target = image.with_digest(digest);
                // For a missing attestation, the authority that misses it; else the first.
                let attesting = policy
                    .authorities
                    .iter()
                    .zip(evidence.iter())
                    .find(|(_, e)| {
                        e.failure()
                            .is_some_and(|f| f.reason.is_about_attestations() && f.reason == reason)
                    });
                let about = About {
                    registry: &image.registry,
                    signing: attesting
                        .map(|(authority, _)| authority)
                        .or(policy.authorities.first())
                        .map(|authority| Signing {
                            target: &target,
                            authority: &authority.name,
                            keyless: matches!(authority.trust, Trust::Keyless { .. }),
                            attestation: attesting.and_then(|(authority, evidence)| {
                                evidence
                                    .missing_attestation()
                                    .or(authority.attestations.first().map(String::as_str))
                            }),
                        }),
                };
                match &mut verdict.failure {
                    Some(failure) => failure.messages.extend(messages),
                    None => {
                        verdict.failure = Some(PolicyFailure {
                            reason,
                            messages,
                            remedy: reason.remedy(&about),
                        });
                    }
                }
            }
            verdict
                .authorities
                .extend(evidence.iter().map(|e| (**e).clone()));
        }
        verdict
    }

    async fn evidence_for(
        &self,
        client: &Arc<RegistryClient>,
        image: &ImageRef,
        digest: &str,
        authority: &CompiledAuthority,
        freshness: Freshness,
        deadline: Instant,
    ) -> Arc<AuthorityEvidence> {
        let key = (image.with_digest(digest), authority.fingerprint.clone());
        let mut newer_than = None;
        if let Some(hit) = self.evidence.get(&key).await {
            let age = hit.read_at.elapsed();
            let usable = if hit.evidence.verified() {
                let renew = &self.settings.revalidate_after;
                if !renew.is_zero() && age >= *renew {
                    self.revalidate(key, client, image, digest, authority, hit.read_at);
                }
                true
            } else {
                freshness.accepts_refusal(age)
            };
            if usable {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return hit.evidence;
            }
            newer_than = Some(hit.read_at);
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let read = Reader {
            sets: &self.signature_sets,
            results: &self.evidence,
            generation: &self.generation,
            client,
            image,
            digest,
        };
        match read.judge(authority, newer_than, deadline).await {
            Ok(evidence) => evidence,
            Err(refusal) => {
                self.registry_errors.fetch_add(1, Ordering::Relaxed);
                refusal
            }
        }
    }

    /// Renews a verified result in the background (see `cache`): one renewal per result at a time,
    /// a bounded number at once; the review that asked goes on with the result it has.
    fn revalidate(
        &self,
        key: EvidenceKey,
        client: &Arc<RegistryClient>,
        image: &ImageRef,
        digest: &str,
        authority: &CompiledAuthority,
        read_at: Instant,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let jobs = self.revalidations.clone();
        let permit = {
            let mut in_flight = jobs.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.contains(&key) {
                return;
            }
            let Ok(permit) = jobs.permits.clone().try_acquire_owned() else {
                jobs.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            in_flight.insert(key.clone());
            permit
        };
        let (sets, results, generation) = (
            self.signature_sets.clone(),
            self.evidence.clone(),
            self.generation.clone(),
        );
        let (client, image, digest, authority) = (
            client.clone(),
            image.clone(),
            digest.to_owned(),
            authority.clone(),
        );
        runtime.spawn(async move {
            let _permit = permit;
            let read = Reader {
                sets: &sets,
                results: &results,
                generation: &generation,
                client: &client,
                image: &image,
                digest: &digest,
            };
            let deadline = Instant::now() + REVALIDATION_TIMEOUT;
            let judged =
                tokio::time::timeout(REVALIDATION_TIMEOUT, read.judge(&authority, Some(read_at), deadline))
                    .await;
            let counter = match judged {
                Ok(Ok(evidence)) if evidence.verified() => &jobs.renewed,
                Ok(Ok(_)) => {
                    tracing::info!(image = %image.with_digest(&digest), authority = %authority.name, "a verified result was renewed as a refusal");
                    &jobs.revoked
                }
                _ => &jobs.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut in_flight = jobs.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.remove(&key);
        });
    }

    /// The digest `image` names: itself when it has one; for a tag, the registry's answer, shared by
    /// concurrent lookups and reused for [`VerifierSettings::tag_ttl`]. Failures are not kept.
    async fn resolve(
        &self,
        client: &Arc<RegistryClient>,
        image: &ImageRef,
        deadline: Instant,
    ) -> Result<crate::registry::Resolved, Arc<RegistryError>> {
        let Some(tag) = image.tag.clone().filter(|_| image.digest.is_none()) else {
            return client.resolve(image, deadline).await.map_err(Arc::new);
        };
        if self.settings.tag_ttl.is_zero() {
            return client.resolve(image, deadline).await.map_err(Arc::new);
        }
        let key = (image.name(), client.config().clone(), tag);
        self.tags
            .try_get_with(key, client.resolve(image, deadline))
            .await
    }

    /// Whether the tag of `image` (a reference with a tag and a digest) names its digest in the
    /// registry, read with `policy`'s access settings through the tag cache. Any failure is "not
    /// shown": the caller then decides by the digest alone, the stricter choice.
    pub async fn tag_names_digest(
        &self,
        image: &ImageRef,
        policy: &CompiledPolicy,
        deadline: Instant,
    ) -> bool {
        let (Some(_), Some(digest)) = (&image.tag, &image.digest) else {
            return false;
        };
        let tagged = ImageRef {
            digest: None,
            ..image.clone()
        };
        let Ok(client) = self.client(&tagged, policy) else {
            return false;
        };
        matches!(self.resolve(&client, &tagged, deadline).await, Ok(resolved) if resolved.digest == *digest)
    }

    /// The client for `image`'s registry under `policy`'s access settings (shared, bounded). Later
    /// stages use it for the registry's other APIs (RegistryX's REST API), so that they honour the
    /// policy's `caBundle` too.
    pub fn client(
        &self,
        image: &ImageRef,
        policy: &CompiledPolicy,
    ) -> Result<Arc<RegistryClient>, RegistryError> {
        let config = policy
            .registry
            .config_for(image, self.fallback_credentials.as_ref());
        let key = (image.registry.clone(), config.clone());
        // A miss builds the client under moka's per-key lock only: other registries are not held up.
        self.clients
            .try_get_with(key, || RegistryClient::new(image, config).map(Arc::new))
            // The error of the one build that ran, shared with the loads that waited on it.
            .map_err(Arc::unwrap_or_clone)
    }
}

/// One digest's signatures, read through the shared caches.
struct Reader<'a> {
    sets: &'a SetCache,
    results: &'a EvidenceCache,
    generation: &'a AtomicU64,
    client: &'a Arc<RegistryClient>,
    image: &'a ImageRef,
    digest: &'a str,
}

impl Reader<'_> {
    /// Judges `authority` on the digest's signatures (read after `newer_than` when given) and caches
    /// the result, unless an invalidation came while it read. A registry failure is not a verdict on
    /// the image: `Err` is the refusal for now, not cached beyond the short life of the shared read.
    async fn judge(
        &self,
        authority: &CompiledAuthority,
        newer_than: Option<Instant>,
        deadline: Instant,
    ) -> Result<Arc<AuthorityEvidence>, Arc<AuthorityEvidence>> {
        let read = self
            .signatures(!authority.attestations.is_empty(), newer_than, deadline)
            .await;
        match &read.found {
            Ok(set) => {
                let evidence = Arc::new(evaluate(authority, self.image, self.digest, set));
                if read.generation == self.generation.load(Ordering::Acquire) {
                    let key = (
                        self.image.with_digest(self.digest),
                        authority.fingerprint.clone(),
                    );
                    let cached = Cached {
                        evidence: evidence.clone(),
                        read_at: read.at,
                    };
                    self.results.insert(key, cached).await;
                }
                Ok(evidence)
            }
            Err(error) => {
                let problem = Failure::from(error);
                Err(Arc::new(AuthorityEvidence {
                    authority: authority.name.clone(),
                    digest: self.digest.to_owned(),
                    outcome: Outcome::Refused(Failure::new(
                        problem.reason,
                        format!("cannot read the signatures: {}", problem.message),
                    )),
                    attestations: Vec::new(),
                    unmet_attestation: None,
                }))
            }
        }
    }

    /// The digest's signatures, shared with concurrent lookups for a few seconds; read again when the
    /// shared read is not newer than `newer_than` or an invalidation came after it began.
    async fn signatures(
        &self,
        attestations: bool,
        newer_than: Option<Instant>,
        deadline: Instant,
    ) -> Arc<Discovery> {
        let key = (
            self.image.name(),
            client_config_key(self.client),
            self.digest.to_owned(),
            attestations,
        );
        let shared = self
            .sets
            .get_with(key.clone(), self.read(attestations, deadline))
            .await;
        let outdated = shared.generation != self.generation.load(Ordering::Acquire)
            || newer_than.is_some_and(|after| shared.at <= after);
        if !outdated {
            return shared;
        }
        self.sets.invalidate(&key).await;
        self.sets
            .get_with(key, self.read(attestations, deadline))
            .await
    }

    async fn read(&self, attestations: bool, deadline: Instant) -> Arc<Discovery> {
        let (at, generation) = (Instant::now(), self.generation.load(Ordering::Acquire));
        let found = match signatures::discover(
            self.client,
            &self.image.repository,
            self.digest,
            attestations,
            deadline,
        )
        .await
        {
            Ok(mut set) => {
                signatures::find_signed_elsewhere(
                    self.client,
                    self.image,
                    self.digest,
                    &mut set,
                    deadline,
                )
                .await;
                Ok(set)
            }
            failed => failed,
        };
        Arc::new(Discovery {
            at,
            generation,
            found,
        })
    }
}

/// Identifies a client's configuration inside the discovery cache key.
fn client_config_key(client: &RegistryClient) -> RegistryConfig {
    client.config().clone()
}

async fn platform_digests(
    client: &RegistryClient,
    image: &ImageRef,
    resolved: &crate::registry::Resolved,
    deadline: Instant,
) -> Result<Vec<String>, RegistryError> {
    let fetched = client
        .get_manifest(&image.repository, &resolved.digest, deadline)
        .await?;
    let media_type = resolved
        .media_type
        .clone()
        .or(fetched.media_type.clone())
        .unwrap_or_default();
    let declared = serde_json::from_slice::<serde_json::Value>(&fetched.bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let is_index = [media_type.as_str(), declared.as_str()]
        .iter()
        .any(|t| crate::registry::is_index(t));
    if !is_index {
        return Ok(Vec::new());
    }
    let step = Step::ReadImageIndex {
        repository: image.repository.clone(),
        digest: resolved.digest.clone(),
    };
    Ok(client
        .index_manifests(&step, &fetched)?
        .into_iter()
        .map(|d| d.digest().to_string())
        .collect())
}

fn evaluate(
    authority: &CompiledAuthority,
    image: &ImageRef,
    digest: &str,
    set: &SignatureSet,
) -> AuthorityEvidence {
    let refused = |failure| AuthorityEvidence {
        authority: authority.name.clone(),
        digest: digest.to_owned(),
        outcome: Outcome::Refused(failure),
        attestations: Vec::new(),
        unmet_attestation: None,
    };
    let mut failures: Vec<Failure> = Vec::new();
    for signature in &set.signatures {
        match check::check(authority, digest, signature) {
            Ok(proof) => {
                return attested(
                    authority,
                    image,
                    digest,
                    set,
                    AuthorityEvidence {
                        authority: authority.name.clone(),
                        digest: digest.to_owned(),
                        outcome: Outcome::Verified(proof),
                        attestations: Vec::new(),
                        unmet_attestation: None,
                    },
                );
            }
            Err(failure) if !failures.contains(&failure) => failures.push(failure),
            Err(_) => {}
        }
    }
    let problems = if set.problems.is_empty() {
        String::new()
    } else {
        let messages: Vec<&str> = set.problems.iter().map(|p| p.message.as_str()).collect();
        format!(" (registry problems: {})", messages.join("; "))
    };
    // What explains the refusal best: a signature that failed says more than a read that failed, and
    // with no signature at all, a failed read (an empty blob, a refusal) is the reason, not "unsigned".
    let empty_blob = set.problems.iter().any(|p| p.reason == Reason::EmptyBlob);
    let reason = Reason::most_telling(
        failures
            .iter()
            .map(|f| f.reason)
            .chain(empty_blob.then_some(Reason::EmptyBlob)),
    )
    .or_else(|| Reason::most_telling(set.problems.iter().map(|p| p.reason)))
    .unwrap_or(if set.signed_elsewhere.is_empty() {
        Reason::NoSignature
    } else {
        Reason::OtherDigest
    });
    let message = match failures.as_slice() {
        [] if set.problems.is_empty() && set.signed_elsewhere.is_empty() => {
            format!("no signature found for {digest} in {}", image.name())
        }
        [] if set.problems.is_empty() => {
            let question = match &image.tag {
                Some(tag) => format!(": was {tag} re-pushed without re-signing?"),
                None => String::new(),
            };
            format!(
                "no signature found for {digest} in {}, but signatures exist for other digests of it \
                 ({}){question}",
                image.name(),
                set.signed_elsewhere.join(", ")
            )
        }
        [] => format!(
            "no signature could be read for {digest} in {}{problems}",
            image.name()
        ),
        [only] => format!("{}{problems}", only.message),
        many => format!(
            "none of {} signatures verifies: {}{problems}",
            set.signatures.len(),
            many.iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    refused(Failure::new(reason, message))
}

/// The evidence of an authority whose signature verified, with the attestations it requires: each
/// required predicate type needs one attestation that verifies against the authority, names the
/// digest and has that type; without one the authority refuses, saying why.
fn attested(
    authority: &CompiledAuthority,
    image: &ImageRef,
    digest: &str,
    set: &SignatureSet,
    mut evidence: AuthorityEvidence,
) -> AuthorityEvidence {
    if authority.attestations.is_empty() {
        return evidence;
    }
    let found = set
        .attestations
        .iter()
        .map(check::FoundAttestation::Legacy)
        .chain(set.signatures.iter().filter_map(|s| match s {
            FoundSignature::Bundle(bundle) => Some(check::FoundAttestation::Bundle(bundle)),
            FoundSignature::Legacy(_) => None,
        }));
    evidence.attestations = found
        .filter_map(|f| check::check_attestation(authority, digest, &f))
        .collect();
    for required in &authority.attestations {
        let all = &evidence.attestations;
        if all
            .iter()
            .any(|a| a.counted && a.predicate_type.as_ref() == Some(required))
        {
            continue;
        }
        let of_type: Vec<&check::Attestation> = all
            .iter()
            .filter(|a| a.predicate_type.as_ref() == Some(required))
            .collect();
        let shown = crate::untrusted::quote(required);
        let (reason, message) = if !of_type.is_empty() {
            let reason = Reason::most_telling(of_type.iter().filter_map(|a| a.reason_kind))
                .unwrap_or(Reason::AttestationOtherSigner);
            let why: Vec<String> = of_type.iter().filter_map(|a| a.reason.clone()).collect();
            (
                reason,
                format!(
                    "none of {} attestations of type {shown} for {digest} counts: {}",
                    of_type.len(),
                    crate::untrusted::first_few(why, 3)
                ),
            )
        } else if all.iter().any(|a| a.verified) {
            let types: Vec<String> = all
                .iter()
                .filter(|a| a.verified)
                .filter_map(|a| a.predicate_type.clone())
                .collect();
            (
                Reason::AttestationOtherType,
                format!(
                    "no attestation of type {shown} for {digest}; the authority attested only {}",
                    crate::untrusted::first_few(types, 3)
                ),
            )
        } else {
            (
                Reason::AttestationMissing,
                format!(
                    "the signature verifies, but no attestation of type {shown} is stored for {digest} in {}",
                    image.name()
                ),
            )
        };
        evidence.unmet_attestation = Some(required.clone());
        evidence.outcome = Outcome::Refused(Failure::new(reason, message));
        break;
    }
    evidence
}

fn failed(
    policy: &CompiledPolicy,
    message: String,
    reason: Reason,
    registry: &str,
) -> PolicyVerdict {
    PolicyVerdict {
        policy: policy.name.clone(),
        policy_uid: policy.uid.clone(),
        mode: policy.mode,
        authorities: Vec::new(),
        failure: Some(PolicyFailure {
            reason,
            messages: vec![message],
            remedy: reason.remedy(&About::registry(registry)),
        }),
        rego_input: None,
        evidence_complete: false,
    }
}
