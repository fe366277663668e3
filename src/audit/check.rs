//! The real [`ImageCheck`]: admission's [`ImageDecider`] on the current policy snapshot, through the
//! shared verifier and its caches, as the webhook would decide the image today. The decision is
//! [`Review::Audit`]: what runs is by digest or was pinned at its admission, so the pin checks of
//! validation do not apply, and `mode: audit` policies are judged like enforcing ones.
//!
//! Rego sees the namespace and its labels, as `verify --namespace` does, but no request and no pod: one
//! image is checked once per namespace, not once per pod (a module that reads `input.pod` is judged on
//! an empty pod here).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};

use super::pass::{Checked, ImageCheck, Key, NO_POLICY, Row};
use crate::admission::{ImageDecider, ImageDecision, Review, Scope};
use crate::decide::RequestContext;
use crate::policy::{CompiledPolicy, SharedSnapshot};
use crate::registry::ImageRef;
use crate::verify::{PolicyVerdict, Verifier};

pub struct DeciderCheck {
    pub decider: ImageDecider,
    pub snapshot: SharedSnapshot,
    pub verifier: Arc<Verifier>,
    /// Namespace labels, for policies' selectors and Rego's `input.environment`.
    pub namespaces: Store<Namespace>,
    /// Rego's `input.environment` for namespaces without a label (`--environment`).
    pub environment: Option<String>,
    /// How long one image's check may take (the registry's deadline).
    pub timeout: Duration,
}

impl DeciderCheck {
    fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// What of a policy decides its verdict: a change of any of it re-checks the images it governs. A Rego
/// module can come from a ConfigMap that changes without the policy's generation, so a policy with
/// Rego also changes with every snapshot.
fn hash_policy(policy: &CompiledPolicy, revision: u64, hasher: &mut DefaultHasher) {
    policy.name.hash(hasher);
    policy.uid.hash(hasher);
    policy.generation.hash(hasher);
    format!("{:?}", policy.mode).hash(hasher);
    policy.signature_required.hash(hasher);
    for authority in &policy.authorities {
        authority.fingerprint.hash(hasher);
    }
    if policy.rego.is_some() {
        revision.hash(hasher);
    }
}

impl ImageCheck for DeciderCheck {
    fn fingerprint(&self, key: &Key) -> u64 {
        let mut hasher = DefaultHasher::new();
        let Ok(image) = ImageRef::parse(&key.image) else {
            return 0;
        };
        let labels = self.labels(&key.namespace);
        labels.hash(&mut hasher);
        let snapshot = self.snapshot.load();
        let governing = snapshot.governing(&image, Some(&labels));
        let by_digest = governing.if_tag_names_digest.iter().flatten();
        for policy in governing.policies.iter().chain(by_digest) {
            hash_policy(policy, snapshot.revision, &mut hasher);
        }
        governing.not_ready.hash(&mut hasher);
        hasher.finish()
    }

    async fn check(&self, key: &Key) -> Checked {
        let before = self.verifier.registry_requests();
        let labels = self.labels(&key.namespace);
        let context = RequestContext {
            namespace: Some(key.namespace.clone()),
            namespace_labels: labels.clone(),
            default_environment: self.environment.clone(),
            request: None,
            pod: None,
            keep_rego_input: false,
        };
        let recorded = BTreeMap::new();
        let scope = Scope {
            labels: Some(&labels),
            context: &context,
            recorded: &recorded,
            review: Review::Audit,
        };
        let deadline = Instant::now() + self.timeout;
        let decision = self.decider.decide("", &key.image, &scope, deadline).await;
        // The verifier's counter also moves for admission's own requests on this replica meanwhile:
        // the audit is then charged more than it spent, and slows down; it never overspends.
        let requests = self.verifier.registry_requests().saturating_sub(before);
        Checked {
            rows: rows(&decision),
            requests,
        }
    }
}

/// One row per governing policy, or one of [`NO_POLICY`] for a refusal that no policy made; an image
/// admitted with no policy (`--unmatched allow`) has none.
pub fn rows(decision: &ImageDecision) -> Vec<Row> {
    match (&decision.verdict, &decision.refusal) {
        (Some(verdict), _) if !verdict.policies.is_empty() => {
            verdict.policies.iter().map(policy_row).collect()
        }
        (_, Some(refusal)) => vec![Row {
            policy: NO_POLICY.to_owned(),
            rule: refusal.reason.label().to_owned(),
            reason: Some(refusal.reason.label()),
            message: refusal.message.clone(),
        }],
        _ => Vec::new(),
    }
}

fn policy_row(policy: &PolicyVerdict) -> Row {
    let Some(failure) = &policy.failure else {
        let authority = policy
            .authorities
            .iter()
            .find(|a| a.verified())
            .map_or("rego", |a| a.authority.as_str());
        return Row {
            policy: policy.policy.clone(),
            rule: authority.to_owned(),
            reason: None,
            message: String::new(),
        };
    };
    let mut message = failure.messages.join("; ");
    if let Some(remedy) = &failure.remedy {
        message.push_str("; ");
        message.push_str(remedy);
    }
    Row {
        policy: policy.policy.clone(),
        rule: failure.reason.label().to_owned(),
        reason: Some(failure.reason.label()),
        message,
    }
}
