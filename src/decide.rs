//! The decision stage: the verification verdict, then each policy's Rego rules on it, to the verdict
//! admission and `verify` report.
//!
//! The stages, in the order data flows (each module uses only those before it):
//!
//! 1. `registry`: references in canonical form, and the OCI distribution API.
//! 2. `rego`: the Rego engine and its input document (knows nothing of policies or signatures).
//! 3. `policy`: the resources, compiled (authorities, globs, selectors, Rego modules) into snapshots.
//! 4. `verify`: signatures found and checked, per policy and authority: evidence and a typed reason.
//! 5. `decide` (this module): Rego, fed by that evidence and by the request, amends the verdict.
//! 6. `admission` (and `verify` on the command line): which policies govern which image, the
//!    response, pins, metrics and the decision log.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;

use crate::policy::CompiledPolicy;
use crate::refusal::{About, Reason};
use crate::registry::ImageRef;
use crate::registry::registryx::{
    ApiError, ApiErrorKind, VulnerabilitySummary, vulnerability_summary,
};
use crate::rego::{
    RegoAttestation, RegoInput, RegoPod, RegoPolicy, RegoRequest, RegoSignature, Vulnerabilities,
};
use crate::verify::{Freshness, ImageVerdict, PolicyVerdict, Verifier};

/// Rego denial messages of one policy shown in a verdict; the rest are counted.
const MAX_DENIALS_SHOWN: usize = 8;

/// The policies that decide `image`, settled: [`crate::policy::choose_policies`] picks by the
/// reference; for `repo:tag@digest` whose tag would pick other policies than its digest alone, the
/// tag's decide only if the registry shows that the tag names that digest (one cached tag lookup),
/// else the digest's. A tag is a label the runtime ignores when a digest is given: it must not choose
/// the weaker rules for bytes it does not name. One function for admission and `verify` alike.
pub async fn settle_policies(
    verifier: &Verifier,
    image: &ImageRef,
    policies: Vec<Arc<CompiledPolicy>>,
    if_tag_names_digest: Option<Vec<Arc<CompiledPolicy>>>,
    deadline: Instant,
) -> Vec<Arc<CompiledPolicy>> {
    let Some(tagged) = if_tag_names_digest else {
        return policies;
    };
    match tagged.first() {
        Some(first) if verifier.tag_names_digest(image, first, deadline).await => tagged,
        _ => policies,
    }
}

/// What the admission request says about the workload, for the Rego input document. Empty for the
/// command line (operation `pull`, no namespace).
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub namespace: Option<String>,
    pub namespace_labels: std::collections::BTreeMap<String, String>,
    /// `input.environment` when the namespace has no `environment` (or `env`) label, as RegistryX's
    /// server-wide POLICY_ENVIRONMENT; without it, the namespace's name.
    pub default_environment: Option<String>,
    pub request: Option<RegoRequest>,
    pub pod: Option<RegoPod>,
    /// Keep each policy's Rego input document in its verdict (`verify --output json`); admission does
    /// not, since a document carries the pod's annotations.
    pub keep_rego_input: bool,
}

/// Verifies `image` against `policies`, then runs each policy's Rego rules on the evidence: the
/// verdict admission and the command line report.
pub async fn decide(
    verifier: &Verifier,
    image: &ImageRef,
    policies: &[Arc<CompiledPolicy>],
    context: &RequestContext,
    freshness: Freshness,
    deadline: Instant,
) -> ImageVerdict {
    let mut verdict = verifier.verify(image, policies, freshness, deadline).await;
    let Some(digest) = verdict.digest.clone() else {
        return verdict;
    };
    let stage = Stage {
        verifier,
        image,
        digest: &digest,
        context,
        deadline,
    };
    join_all(
        verdict
            .policies
            .iter_mut()
            .zip(policies)
            .filter(|(checked, policy)| checked.evidence_complete && policy.rego.is_some())
            .map(|(checked, policy)| stage.apply(policy, checked)),
    )
    .await;
    verdict
}

/// One image's Rego stage: what every policy's rules are evaluated against.
struct Stage<'a> {
    verifier: &'a Verifier,
    image: &'a ImageRef,
    digest: &'a str,
    context: &'a RequestContext,
    deadline: Instant,
}

impl Stage<'_> {
    async fn apply(&self, policy: &CompiledPolicy, verdict: &mut PolicyVerdict) {
        let Some(rego) = &policy.rego else {
            return;
        };
        let (refusal, input) = self.evaluate(rego, policy, verdict).await;
        verdict.rego_input = self.context.keep_rego_input.then_some(input);
        match refusal {
            Some(Refusal::Rego(denials)) => verdict.refuse(Reason::Rego, denials),
            Some(Refusal::RegistryxApi(error)) => {
                let reason = Reason::of_registryx_api(&error);
                let host = error.host();
                verdict.refuse(
                    reason,
                    vec![format!("cannot read the vulnerability summary: {error}")],
                );
                if let Some(failure) = verdict.failure.as_mut()
                    && failure.remedy.is_none()
                {
                    failure.remedy = reason.remedy(&About::registry(&host));
                }
            }
            None => {}
        }
    }

    /// Runs the policy's Rego rules on the input document; what refuses, if anything, and the
    /// document. An evaluation error or a runaway policy refuses too: rules that cannot be evaluated
    /// are not skipped. When RegistryX's API cannot be read, the rules are not evaluated at all: their
    /// verdict on a document without the scan would be about the outage, in the policy's words.
    async fn evaluate(
        &self,
        rego: &Arc<RegoPolicy>,
        policy: &CompiledPolicy,
        verdict: &PolicyVerdict,
    ) -> (Option<Refusal>, serde_json::Value) {
        let (image, digest, context) = (self.image, self.digest, self.context);
        let mut unread = None;
        let vulnerabilities = match &policy.registry.registryx_api {
            Some(api) => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                // The registry's own client: the policy's caBundle applies to its REST API too.
                let read = match self.verifier.client(image, policy) {
                    Ok(client) => {
                        vulnerability_summary(
                            client.http_for(api),
                            api,
                            &image.repository,
                            digest,
                            left,
                        )
                        .await
                    }
                    Err(error) => Err(ApiError {
                        url: api.clone(),
                        kind: ApiErrorKind::NoAnswer(error.to_string()),
                    }),
                };
                match read {
                    Ok(found) => found.map(Vulnerabilities::from),
                    Err(error) => {
                        unread = Some(error);
                        None
                    }
                }
            }
            None => None,
        };
        let signatures = verdict
            .authorities
            .iter()
            .filter(|e| e.digest == digest)
            .map(|e| RegoSignature {
                authority: e.authority.clone(),
                verified: e.verified(),
                key_id: e.proof().and_then(|p| p.key_id.clone()),
                issuer: e.proof().and_then(|p| p.issuer.clone()),
                subject: e.proof().and_then(|p| p.subject.clone()),
                rekor_integrated_time: e.proof().and_then(|p| p.rekor_integrated_time),
            })
            .collect();
        let mut attestations: std::collections::BTreeMap<String, Vec<RegoAttestation>> =
            std::collections::BTreeMap::new();
        for evidence in verdict.authorities.iter().filter(|e| e.digest == digest) {
            for found in evidence.verified_attestations() {
                let (Some(kind), Some(predicate)) = (&found.predicate_type, &found.predicate)
                else {
                    continue;
                };
                attestations
                    .entry(kind.clone())
                    .or_default()
                    .push(RegoAttestation {
                        predicate: predicate.clone(),
                        signer: evidence.authority.clone(),
                        integrated_time: found.rekor_integrated_time,
                    });
            }
        }
        let input = RegoInput {
            image: image.to_string(),
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            tag: image.tag.clone(),
            digest: Some(digest.to_owned()),
            signatures,
            attestations,
            vulnerabilities,
            environment: RegoInput::environment_of(
                context.namespace.as_deref(),
                &context.namespace_labels,
                context.default_environment.as_deref(),
            ),
            namespace: context.namespace.clone(),
            user: context
                .request
                .as_ref()
                .map(|r| r.user_info.username.clone()),
            request: context.request.clone(),
            pod: context.pod.clone(),
            ..RegoInput::default()
        }
        .to_value();
        if let Some(error) = unread {
            return (Some(Refusal::RegistryxApi(error)), input);
        }
        let mut refusals = Vec::new();
        // Evaluation is CPU work bounded by the policy's own time limit: off the async threads.
        let rego = rego.clone();
        let evaluated = input.clone();
        let outcome = tokio::task::spawn_blocking(move || rego.evaluate(&evaluated)).await;
        match outcome {
            Ok(Ok(decision)) => {
                // A module's messages can carry what the input holds (a certificate's subject, a
                // scanner's package names): each is cleaned and cut, and a module that denies a
                // thousand times is told in a few lines.
                let more = decision.denials.len().saturating_sub(MAX_DENIALS_SHOWN);
                refusals.extend(
                    decision
                        .denials
                        .iter()
                        .take(MAX_DENIALS_SHOWN)
                        .map(|d| format!("rego: {}", crate::untrusted::excerpt(d, 500))),
                );
                if more > 0 {
                    refusals.push(format!("rego: and {more} more denials"));
                }
            }
            Ok(Err(error)) => refusals.push(format!("rego: evaluation failed, refusing: {error}")),
            Err(error) => refusals.push(format!("rego: evaluation aborted, refusing: {error}")),
        }
        (
            (!refusals.is_empty()).then_some(Refusal::Rego(refusals)),
            input,
        )
    }
}

/// Why a policy's Rego stage refuses.
enum Refusal {
    /// The rules denied (or could not be evaluated), in these messages.
    Rego(Vec<String>),
    /// RegistryX's REST API could not be read, so the rules were not evaluated.
    RegistryxApi(ApiError),
}

/// RegistryX's scan summary as the Rego input document carries it.
impl From<VulnerabilitySummary> for Vulnerabilities {
    fn from(summary: VulnerabilitySummary) -> Vulnerabilities {
        let VulnerabilitySummary {
            critical,
            high,
            medium,
            low,
            status,
        } = summary;
        Vulnerabilities {
            critical,
            high,
            medium,
            low,
            status,
        }
    }
}
