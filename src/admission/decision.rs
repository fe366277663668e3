//! One image's decision, the same for the webhook and for `registryx-guard verify`: which policies
//! govern it (a policy that is not Ready refuses; none at all is `--unmatched`'s to decide), its
//! registry's bulkhead, verification and Rego (`decide`), and, for the validating review, the pin and
//! tag-moved checks. The command line builds an [`ImageDecider`] from its policy files as the webhook
//! does from the cluster, so the two cannot word or decide a case differently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::workload::VERIFIED_DIGESTS_ANNOTATION;
use crate::decide::{RequestContext, decide, settle_policies};
use crate::policy::{CompiledPolicy, Mode, SharedSnapshot};
use crate::refusal::{About, Failure, Reason, VERIFIED_LABEL};
use crate::registry::ImageRef;
use crate::verify::{Freshness, ImageVerdict, Verifier};

/// What the webhook does with an image that no policy governs.
///
/// `Deny` is the default, as in sigstore's policy-controller: namespaces opt in, and inside them an
/// image no policy vouches for is refused. Spelling can never recognise an IP literal or a DNS alias of
/// a governed registry, so refusing the unmatched is the only answer that closes those doors. `Warn`
/// admits with an admission warning and `Allow` admits silently, for a gradual roll-out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Deny,
    Warn,
    Allow,
}

/// Which review a decision is for: the pin and tag-moved checks belong to the validating review
/// only (the mutating one pins; the command line decides as validation after the pin; the background
/// audit re-checks what runs, which is by digest or was pinned at its admission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    Mutate,
    Validate,
    Command,
    Audit,
}

/// What one decision knows of its workload.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The namespace's labels, for policies' namespaceSelectors (`None`: no namespace, selectors do
    /// not restrict).
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub context: &'a RequestContext,
    /// Digests recorded at the workload's admission (see [`VERIFIED_DIGESTS_ANNOTATION`]).
    pub recorded: &'a BTreeMap<String, String>,
    pub review: Review,
}

/// What was decided about one image.
#[derive(Clone, Debug)]
pub struct ImageDecision {
    pub container: String,
    pub image: String,
    /// Why it was refused, with the remedy in its message; `None`: admitted.
    pub refusal: Option<Failure>,
    pub warnings: Vec<String>,
    pub verdict: Option<Arc<ImageVerdict>>,
    /// Some governing policy pins admitted tags to their verified digest.
    pub pins: bool,
}

impl ImageDecision {
    fn new(container: &str, image: &str) -> ImageDecision {
        ImageDecision {
            container: container.to_owned(),
            image: image.to_owned(),
            refusal: None,
            warnings: Vec::new(),
            verdict: None,
            pins: false,
        }
    }

    pub fn admitted(&self) -> bool {
        self.refusal.is_none()
    }

    /// Why it was refused; for an image admitted with no policy, [`Reason::NoPolicy`].
    pub fn reason(&self) -> Option<Reason> {
        match (&self.refusal, &self.verdict) {
            (Some(refusal), _) => Some(refusal.reason),
            (None, None) => Some(Reason::NoPolicy),
            (None, Some(_)) => None,
        }
    }

    /// The metrics label: [`Self::reason`]'s, or [`VERIFIED_LABEL`].
    pub fn label(&self) -> &'static str {
        self.reason().map_or(VERIFIED_LABEL, Reason::label)
    }

    /// The refusal's text, as kubectl shows it.
    pub fn refusal_text(&self) -> Option<&str> {
        self.refusal.as_ref().map(|r| r.message.as_str())
    }

    /// Refuses for `reason` with `message` and the reason's remedy `about` the image.
    fn refused(mut self, reason: Reason, message: String, about: &About) -> ImageDecision {
        self.refusal = Some(Failure::remedied(reason, message, about));
        self
    }

    /// The decision with its refusal and warnings within `max_bytes` each, and at most `max_warnings`
    /// warnings.
    pub fn bounded(mut self, max_bytes: usize, max_warnings: usize) -> ImageDecision {
        if let Some(refusal) = &mut self.refusal
            && refusal.message.len() > max_bytes
        {
            refusal.message = crate::untrusted::bound(&refusal.message, max_bytes);
        }
        for warning in &mut self.warnings {
            if warning.len() > max_bytes {
                *warning = crate::untrusted::bound(warning, max_bytes);
            }
        }
        self.warnings.truncate(max_warnings);
        self
    }
}

/// The decision log's and `verify --output json`'s form: the refusal as its text and its reason.
impl Serialize for ImageDecision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            container: &'a str,
            image: &'a str,
            admitted: bool,
            reason: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            refusal: Option<&'a str>,
            warnings: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            verdict: Option<&'a ImageVerdict>,
        }
        Wire {
            container: &self.container,
            image: &self.image,
            admitted: self.admitted(),
            reason: self.label(),
            refusal: self.refusal_text(),
            warnings: &self.warnings,
            verdict: self.verdict.as_deref(),
        }
        .serialize(serializer)
    }
}

/// Decides images against the policies of a snapshot, shared by every request.
pub struct ImageDecider {
    snapshot: SharedSnapshot,
    verifier: Arc<Verifier>,
    unmatched: Unmatched,
    /// Image verifications in flight at once for one registry, over all requests: a bulkhead, so that a
    /// registry that hangs holds only its own slots and never refuses another registry's images.
    max_concurrent_verifications: usize,
    /// Verification slots per canonical registry (bounded, evicted when idle).
    registry_permits: moka::sync::Cache<String, Arc<Semaphore>>,
}

impl ImageDecider {
    pub fn new(
        snapshot: SharedSnapshot,
        verifier: Arc<Verifier>,
        unmatched: Unmatched,
        max_concurrent_verifications: usize,
    ) -> ImageDecider {
        ImageDecider {
            snapshot,
            verifier,
            unmatched,
            max_concurrent_verifications: max_concurrent_verifications.max(1),
            registry_permits: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Decides `image`, written in `container` (`containers[web]`; empty on the command line).
    pub async fn decide(
        &self,
        container: &str,
        written: &str,
        scope: &Scope<'_>,
        deadline: Instant,
    ) -> ImageDecision {
        let decision = ImageDecision::new(container, written);
        let image = match ImageRef::parse(written) {
            Ok(image) => image,
            Err(error) => {
                let message = match container {
                    "" => error.to_string(),
                    _ => format!("{container}: {error}"),
                };
                return decision.refused(Reason::InvalidReference, message, &About::default());
            }
        };
        let about = About::registry(&image.registry);
        let snapshot = self.snapshot.load();
        let governing = snapshot.governing(&image, scope.labels);
        if !governing.not_ready.is_empty() {
            let reasons: Vec<String> = governing
                .not_ready
                .iter()
                .map(|(name, message)| format!("policy {name} is not ready: {message}"))
                .collect();
            let message = format!("image {written}: {}", reasons.join("; "));
            return decision.refused(Reason::NotReady, message, &about);
        }
        if governing.policies.is_empty() {
            return self.unmatched(decision, &image);
        }
        let permits = self.registry_permits.get_with_by_ref(&image.registry, || {
            Arc::new(Semaphore::new(self.max_concurrent_verifications))
        });
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(_permit)) = tokio::time::timeout(remaining, permits.acquire()).await else {
            let message = format!(
                "image {written}: not verified before the deadline: registry {} has {} verifications \
                 in flight already (is it slow or down?)",
                image.registry, self.max_concurrent_verifications
            );
            // No remedy: the network and the policy's spec.registry are not the question here.
            let mut decision = decision;
            decision.refusal = Some(Failure::new(Reason::Unreachable, message));
            return decision;
        };
        // Inside the registry's bulkhead: settling may ask the registry what the tag names.
        let policies = settle_policies(
            &self.verifier,
            &image,
            governing.policies,
            governing.if_tag_names_digest,
            deadline,
        )
        .await;
        // The mutating review rechecks cached refusals: see `Freshness::RecheckRefusals`.
        let freshness = match scope.review {
            Review::Mutate => Freshness::RecheckRefusals,
            Review::Validate | Review::Command | Review::Audit => Freshness::Cached,
        };
        let verdict = decide(
            &self.verifier,
            &image,
            &policies,
            scope.context,
            freshness,
            deadline,
        )
        .await;
        self.judge(decision, &image, verdict, &policies, scope)
    }

    /// An image no policy governs: `--unmatched` decides.
    fn unmatched(&self, mut decision: ImageDecision, image: &ImageRef) -> ImageDecision {
        let why = format!(
            "image {} (canonically {image}) is governed by no ImageSigningPolicy",
            decision.image
        );
        match self.unmatched {
            Unmatched::Allow => decision,
            Unmatched::Warn => {
                decision.warnings.push(format!(
                    "{why}; it is admitted only because registryx-guard runs with --unmatched=warn"
                ));
                decision
            }
            Unmatched::Deny => decision.refused(
                Reason::NoPolicy,
                format!("{why}, and registryx-guard admits only images a policy vouches for"),
                &About::registry(&image.registry),
            ),
        }
    }

    /// The verdict made a decision: warnings of `warn` policies, the refusal of `enforce` ones, and
    /// for validation the pin checks.
    fn judge(
        &self,
        mut decision: ImageDecision,
        image: &ImageRef,
        verdict: ImageVerdict,
        policies: &[Arc<CompiledPolicy>],
        scope: &Scope<'_>,
    ) -> ImageDecision {
        decision.pins = policies.iter().any(|p| p.mutate_digest);
        let digest = verdict.digest.as_deref().unwrap_or("digest unknown");
        for policy in verdict.warnings() {
            decision.warnings.push(format!(
                "image {} ({digest}) fails policy {} (warn mode): {}",
                decision.image,
                policy.policy,
                policy.messages().join("; ")
            ));
        }
        if !verdict.admitted() {
            let failed: Vec<String> = verdict
                .refusing()
                .map(|p| {
                    let remedy = p
                        .failure
                        .as_ref()
                        .and_then(|f| f.remedy.as_deref())
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default();
                    format!("policy {}: {}{remedy}", p.policy, p.messages().join("; "))
                })
                .collect();
            let message = format!(
                "image {} ({digest}) refused by {}",
                decision.image,
                failed.join(" | ")
            );
            // Each policy's remedy is in its part of the message already.
            let reason = verdict.reason().unwrap_or(Reason::NoSignature);
            decision.refusal = Some(Failure::new(reason, message));
        } else if image.digest.is_none() && scope.review == Review::Validate {
            decision = check_pinned(decision, image, &verdict, policies, scope.recorded);
        }
        decision.verdict = Some(Arc::new(verdict));
        decision
    }
}

/// What runs must be what was verified. An admitted tag that a pinning policy governs should have
/// reached validation pinned by the mutating webhook; a bare tag here means the mutation failed or was
/// skipped, and the tag could move before the node pulls it: refused (a warning for `warn` policies).
/// For policies that do not pin, the digest recorded at the workload's admission must still be the one
/// the tag names.
fn check_pinned(
    mut decision: ImageDecision,
    image: &ImageRef,
    verdict: &ImageVerdict,
    policies: &[Arc<CompiledPolicy>],
    recorded: &BTreeMap<String, String>,
) -> ImageDecision {
    let Some(digest) = verdict.digest.as_deref() else {
        return decision;
    };
    let about = About::registry(&image.registry);
    let written = decision.image.clone();
    let pinned = format!("{written}@{digest}");
    // `audit` policies neither refuse nor warn at admission.
    let pinning = policies
        .iter()
        .filter(|p| p.mutate_digest && p.mode != Mode::Audit);
    let (enforcing, warning): (Vec<_>, Vec<_>) = pinning.partition(|p| p.mode == Mode::Enforce);
    let unpinned = |list: &[&Arc<CompiledPolicy>]| {
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        format!(
            "image {} is a tag, and policy {} admits only what is pinned to the digest it verified, \
             {pinned} (the mutating webhook pins it; it did not run for this request)",
            written,
            names.join(", ")
        )
    };
    if !warning.is_empty() {
        let warned = Failure::remedied(Reason::Unpinned, unpinned(&warning), &about);
        decision.warnings.push(warned.message);
    }
    if !enforcing.is_empty() {
        let message = unpinned(&enforcing);
        return decision.refused(Reason::Unpinned, message, &about);
    }
    if let Some(admitted_as) = recorded.get(&decision.image)
        && admitted_as != digest
    {
        let message = format!(
            "image {} ({image}) now names {digest}, but the workload was admitted when it named \
             {admitted_as} (annotation {VERIFIED_DIGESTS_ANNOTATION}): the tag moved after it was \
             verified",
            written
        );
        return decision.refused(Reason::TagMoved, message, &about);
    }
    decision
}
