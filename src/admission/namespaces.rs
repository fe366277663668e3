//! The labels of a review's namespace, for policies' namespaceSelectors: from the reflector's cache, or
//! for a namespace created a moment ago, from the API server within the review's deadline.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};

/// Where namespace labels are read.
#[derive(Clone, Default)]
pub struct Namespaces {
    pub store: Option<Store<Namespace>>,
    /// Reads a namespace that the cache does not hold yet.
    pub api: Option<kube::Api<Namespace>>,
}

impl Namespaces {
    /// The labels of `namespace` (`None`: no namespace store, or a cluster-scoped object, where
    /// selectors do not restrict). A namespace whose labels cannot be known is an error, never "no
    /// labels": a `namespaceSelector` would otherwise decide on labels the namespace does not have.
    pub async fn labels(
        &self,
        namespace: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        let (Some(store), Some(namespace)) = (self.store.as_ref(), namespace) else {
            return Ok(None);
        };
        if let Some(found) = store.get(&ObjectRef::new(namespace)) {
            return Ok(Some(found.metadata.labels.clone().unwrap_or_default()));
        }
        let Some(api) = &self.api else {
            return Err(format!(
                "the labels of namespace {namespace} are not known yet; retry in a moment"
            ));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, api.get_opt(namespace)).await {
            Ok(Ok(Some(found))) => Ok(Some(found.metadata.labels.unwrap_or_default())),
            Ok(Ok(None)) => Err(format!("namespace {namespace} does not exist")),
            Ok(Err(error)) => Err(format!(
                "cannot read the labels of namespace {namespace}: {error}"
            )),
            Err(_) => Err(format!(
                "the labels of namespace {namespace} could not be read before the deadline"
            )),
        }
    }
}
