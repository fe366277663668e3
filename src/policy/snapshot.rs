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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::ImageSigningPolicy;
use super::compiled::{CompiledPolicy, ImageMatcher, compile, governing_policies};
use crate::registry::ImageRef;
use crate::verify::authority::SecretSource;

/// A policy that does not compile, and the images it would govern.
#[derive(Clone, Debug)]
pub struct NotReady {
    pub name: String,
    pub message: String,
    images: Option<ImageMatcher>,
    namespace_selector: Option<LabelSelector>,
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
    /// `(policy, why it is not ready)`: each refuses the image.
    pub not_ready: Vec<(String, String)>,
}

impl Governing {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.not_ready.is_empty()
    }
}

impl PolicySnapshot {
    /// Compiles `policies`; each result also comes back, by name, for status reporting.
    pub fn build(
        policies: &[ImageSigningPolicy],
        sources: &dyn SecretSource,
        default_namespace: &str,
        revision: u64,
    ) -> (PolicySnapshot, BTreeMap<String, Result<(), String>>) {
        let mut snapshot = PolicySnapshot {
            revision,
            ..PolicySnapshot::default()
        };
        let mut results = BTreeMap::new();
        for policy in policies {
            let name = policy.metadata.name.clone().unwrap_or_default();
            match compile(policy, sources, default_namespace) {
                Ok(compiled) => {
                    snapshot.policies.push(Arc::new(compiled));
                    results.insert(name, Ok(()));
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
                        namespace_selector: policy.spec.namespace_selector.clone(),
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
        let in_scope = |selector: &Option<LabelSelector>| match (selector, namespace_labels) {
            (Some(selector), Some(labels)) => selector_matches(selector, labels),
            _ => true,
        };
        let in_namespace: Vec<&Arc<CompiledPolicy>> = self
            .policies
            .iter()
            .filter(|p| in_scope(&p.namespace_selector))
            .collect();
        Governing {
            policies: governing_policies(in_namespace.iter().copied(), image)
                .into_iter()
                .cloned()
                .collect(),
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

pub fn shared(snapshot: PolicySnapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(snapshot))
}

/// Kubernetes label-selector semantics: every matchLabels pair and every expression must hold.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_ok = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|expression| {
            let values = expression.values.as_deref().unwrap_or_default();
            let value = labels.get(&expression.key);
            match expression.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // An operator the API server would have refused: match nothing rather than everything.
                _ => false,
            }
        });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["sandbox".into()]),
            }]),
        };
        assert!(selector_matches(&selector, &labels(&[("env", "prod")])));
        assert!(selector_matches(
            &selector,
            &labels(&[("env", "prod"), ("tier", "web")])
        ));
        assert!(!selector_matches(
            &selector,
            &labels(&[("env", "prod"), ("tier", "sandbox")])
        ));
        assert!(!selector_matches(&selector, &labels(&[("env", "dev")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
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
            PolicySnapshot::build(&[broken], &crate::verify::authority::NoSecrets, "ns", 1);
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
}
