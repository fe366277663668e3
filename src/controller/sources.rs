//! Secrets and ConfigMaps as policies see them: from the controller's reflector stores, and only in
//! registryx-guard's own namespace, so that its RBAC never needs to read Secrets cluster-wide.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::policy::authority::SecretSource;

pub struct ClusterSources {
    namespace: String,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

impl ClusterSources {
    pub fn new(
        namespace: &str,
        secrets: Store<Secret>,
        config_maps: Store<ConfigMap>,
    ) -> ClusterSources {
        ClusterSources {
            namespace: namespace.to_owned(),
            secrets,
            config_maps,
        }
    }

    fn check_namespace(&self, kind: &str, namespace: &str, name: &str) -> Result<(), String> {
        if namespace == self.namespace {
            return Ok(());
        }
        Err(format!(
            "{kind} {namespace}/{name}: registryx-guard reads {kind}s only in its own namespace {}; create it there",
            self.namespace
        ))
    }
}

impl SecretSource for ClusterSources {
    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
        self.check_namespace("Secret", namespace, name)?;
        let secret = self
            .secrets
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|value| value.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|data| data.get(key))
                    .map(|v| v.clone().into_bytes())
            })
            .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))
    }

    fn config_map(&self, namespace: &str, name: &str) -> Result<BTreeMap<String, String>, String> {
        self.check_namespace("ConfigMap", namespace, name)?;
        let config_map = self
            .config_maps
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| format!("ConfigMap {namespace}/{name} not found"))?;
        Ok(config_map.data.clone().unwrap_or_default())
    }
}
