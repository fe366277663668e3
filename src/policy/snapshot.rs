//! The policy snapshot: every ImageSigningPolicy compiled, published as one immutable value that the
//! webhook reads without locks (an `ArcSwap` load), replaced whole whenever a policy or what it refers
//! to changes.
//!
//! A policy that does not compile is not dropped: it stays in the snapshot as "not ready", with the globs
//! it governs, so that its images are refused with the reason until it is fixed. A broken policy never
//! weakens enforcement.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kube::core::{Selector, SelectorExt as _};

use super::ImageSigningPolicy;
use super::{CompiledPolicy, ImageMatcher, choose_policies, compile};
use crate::policy::authority::SecretSource;
use crate::registry::ImageRef;

/// A policy that does not compile, and the images it would govern.
#[derive(Clone, Debug)]
pub struct NotReady {
    pub name: String,
    pub message: String,
    images: Option<ImageMatcher>,
    /// None when the policy has none, or one that does not parse: a broken policy refuses everywhere.
    namespace_selector: Option<Selector>,
}

#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    pub policies: Vec<Arc<CompiledPolicy>>,
    pub not_ready: Vec<NotReady>,
    /// Increases with every published snapshot.
    pub revision: u64,
}

/// The policies that govern one image in one namespace.
#[derive(Debug, Default)]
pub struct Governing {
    pub policies: Vec<Arc<CompiledPolicy>>,
    /// For `repo:tag@digest`: the tag's policies, which decide instead of `policies` once the registry
    /// shows that the tag names the digest (see [`super::choose_policies`]).
    pub if_tag_names_digest: Option<Vec<Arc<CompiledPolicy>>>,
    /// `(policy, why it is not ready)`: each refuses the image.
    pub not_ready: Vec<(String, String)>,
}

impl Governing {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.not_ready.is_empty()
    }
}

impl PolicySnapshot {
    /// Compiles `policies`; each result also comes back, by name, for status reporting: the Ready
    /// message ([`CompiledPolicy::ready_message`]) or why the policy is not ready.
    pub fn build(
        policies: &[ImageSigningPolicy],
        sources: &dyn SecretSource,
        default_namespace: &str,
        revision: u64,
    ) -> (PolicySnapshot, BTreeMap<String, Result<String, String>>) {
        let mut snapshot = PolicySnapshot {
            revision,
            ..PolicySnapshot::default()
        };
        let mut results = BTreeMap::new();
        for policy in policies {
            let name = policy.metadata.name.clone().unwrap_or_default();
            match compile(policy, sources, default_namespace) {
                Ok(compiled) => {
                    results.insert(name, Ok(compiled.ready_message()));
                    snapshot.policies.push(Arc::new(compiled));
                }
                Err(error) => {
                    let message = error.to_string();
                    snapshot.not_ready.push(NotReady {
                        name: name.clone(),
                        message: message.clone(),
                        // Globs that do not compile stand for every image: a typo in a strict
                        // policy must not let its images through under a weaker one.
                        images: Some(
                            ImageMatcher::new(&policy.spec.images)
                                .unwrap_or_else(|_| ImageMatcher::everything()),
                        ),
                        namespace_selector: policy
                            .spec
                            .namespace_selector
                            .clone()
                            .and_then(|selector| Selector::try_from(selector).ok()),
                    });
                    results.insert(name, Err(message));
                }
            }
        }
        snapshot.policies.sort_by(|a, b| a.name.cmp(&b.name));
        (snapshot, results)
    }

    /// The policies that govern `image` for a workload in a namespace with `namespace_labels`
    /// (`None`: no namespace, as for the command line, where selectors do not restrict).
    pub fn governing(
        &self,
        image: &ImageRef,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> Governing {
        let in_scope = |selector: &Option<Selector>| match namespace_labels {
            Some(labels) => in_scope(selector.as_ref(), labels),
            None => true,
        };
        let in_namespace: Vec<&Arc<CompiledPolicy>> = self
            .policies
            .iter()
            .filter(|p| in_scope(&p.namespace_selector))
            .collect();
        let choice = choose_policies(in_namespace.iter().copied(), image);
        Governing {
            policies: choice.policies.into_iter().cloned().collect(),
            if_tag_names_digest: choice
                .if_tag_names_digest
                .map(|tagged| tagged.into_iter().cloned().collect()),
            not_ready: self
                .not_ready
                .iter()
                .filter(|p| {
                    p.images
                        .as_ref()
                        .is_some_and(|m| m.matches(image) || m.matches_by_digest(image))
                        && in_scope(&p.namespace_selector)
                })
                .map(|p| (p.name.clone(), p.message.clone()))
                .collect(),
        }
    }
}

/// The snapshot as the webhook holds it.
pub type SharedSnapshot = Arc<ArcSwap<PolicySnapshot>>;

/// The one way snapshots are published, for the controller and for `--policy-dir` alike: compile,
/// number, log what changed, swap in. The controller republishes with every lease renewal, so only a
/// change is logged at info.
pub struct Publisher {
    shared: SharedSnapshot,
    revision: u64,
    last: Vec<(String, Option<i64>, Result<String, String>)>,
}

impl Publisher {
    pub fn new(shared: SharedSnapshot) -> Publisher {
        Publisher {
            shared,
            revision: 0,
            last: Vec::new(),
        }
    }

    /// Publishes `policies` compiled; each policy's result, by name, for its status.
    pub fn publish(
        &mut self,
        policies: &[ImageSigningPolicy],
        sources: &dyn SecretSource,
        default_namespace: &str,
    ) -> BTreeMap<String, Result<String, String>> {
        self.revision += 1;
        let revision = self.revision;
        let (next, results) = PolicySnapshot::build(policies, sources, default_namespace, revision);
        let summary: Vec<(String, Option<i64>, Result<String, String>)> = policies
            .iter()
            .map(|policy| {
                let name = policy.metadata.name.clone().unwrap_or_default();
                let result = results
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| Ok(String::new()));
                (name, policy.metadata.generation, result)
            })
            .collect();
        if summary == self.last {
            tracing::debug!(revision, "policy snapshot republished, unchanged");
        } else {
            for (name, generation, result) in &summary {
                if self
                    .last
                    .iter()
                    .any(|(n, g, r)| n == name && g == generation && r == result)
                {
                    continue;
                }
                match result {
                    Ok(message) => tracing::info!(policy = %name, %message, "policy ready"),
                    Err(message) => tracing::warn!(
                        policy = %name,
                        %message,
                        "policy not ready; its images are refused"
                    ),
                }
            }
            tracing::info!(
                revision,
                ready = next.policies.len(),
                not_ready = next.not_ready.len(),
                "policy snapshot published"
            );
            self.last = summary;
        }
        self.shared.store(Arc::new(next));
        results
    }
}

pub fn shared(snapshot: PolicySnapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(snapshot))
}

/// Whether a namespace with `labels` is in the scope of `selector` (none: every namespace), by kube's
/// own selector semantics.
pub fn in_scope(selector: Option<&Selector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|selector| selector.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let selector: Selector = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["sandbox".into()]),
            }]),
        }
        .try_into()
        .unwrap();
        let selector = Some(&selector);
        assert!(in_scope(selector, &labels(&[("env", "prod")])));
        assert!(in_scope(
            selector,
            &labels(&[("env", "prod"), ("tier", "web")])
        ));
        assert!(!in_scope(
            selector,
            &labels(&[("env", "prod"), ("tier", "sandbox")])
        ));
        assert!(!in_scope(selector, &labels(&[("env", "dev")])));
        assert!(in_scope(None, &labels(&[])));
    }

    fn policy(yaml: &str) -> ImageSigningPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_broken_policy_still_governs_its_images() {
        let broken = policy(
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: broken}\n\
             spec:\n  images: ['r.example/prod/**']\n  authorities: [{name: k, key: {data: nope}}]\n",
        );
        let (snapshot, results) =
            PolicySnapshot::build(&[broken], &crate::policy::authority::NoSecrets, "ns", 1);
        assert!(
            results["broken"]
                .as_ref()
                .unwrap_err()
                .contains("authority \"k\"")
        );
        let image = ImageRef::parse("r.example/prod/api:1").unwrap();
        let governing = snapshot.governing(&image, None);
        assert!(governing.policies.is_empty());
        assert_eq!(governing.not_ready.len(), 1);
        assert!(
            snapshot
                .governing(&ImageRef::parse("r.example/dev/api:1").unwrap(), None)
                .is_empty()
        );
    }

    #[test]
    fn a_selector_no_one_can_evaluate_makes_the_policy_refuse_everywhere() {
        let odd = policy(
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: odd}\n\
             spec:\n  images: ['r.example/**']\n  signatureRequired: false\n  namespaceSelector:\n    \
             matchExpressions: [{key: env, operator: Bogus, values: [prod]}]\n",
        );
        let (snapshot, results) =
            PolicySnapshot::build(&[odd], &crate::policy::authority::NoSecrets, "ns", 1);
        let message = results["odd"].as_ref().unwrap_err();
        assert!(message.contains("namespaceSelector"), "{message}");
        let image = ImageRef::parse("r.example/app:1").unwrap();
        for labels in [
            labels(&[("env", "prod")]),
            labels(&[("env", "dev")]),
            labels(&[]),
        ] {
            assert_eq!(
                snapshot.governing(&image, Some(&labels)).not_ready.len(),
                1,
                "{labels:?}"
            );
        }
    }
}
