//! Policies: the `ImageSigningPolicy` resource types and loading them from YAML files, the same files
//! that `kubectl apply` takes.

pub mod authority;
mod compiled;
mod crd;
pub mod dir;
mod snapshot;

use std::path::Path;

pub use compiled::{
    CompiledPolicy, ImageMatcher, NormalizedGlob, PolicyChoice, PolicyError, PolicySet,
    RegistryAccess, choose_policies, compile, governing_policies, normalize_glob,
};
pub use crd::*;
use kube::CustomResourceExt;
use serde::Deserialize as _;
pub use snapshot::{
    Governing, NotReady, PolicySnapshot, Publisher, SharedSnapshot, in_scope, shared,
};

use crate::{Error, Result};

/// The CRD manifest as YAML, as `registryx-guard crdgen` prints it and crds/ holds it.
pub fn crd_yaml() -> Result<String> {
    serde_yaml::to_string(&ImageSigningPolicy::crd()).map_err(|error| Error::Serialize {
        what: "the ImageSigningPolicy CRD",
        reason: error.to_string(),
    })
}

/// Reads every `ImageSigningPolicy` document of a YAML file (`---`-separated documents are allowed).
pub fn load_file(path: &Path) -> Result<Vec<ImageSigningPolicy>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_documents(path, &text)
}

fn parse_documents(path: &Path, text: &str) -> Result<Vec<ImageSigningPolicy>> {
    let mut policies = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|source| Error::PolicyFile {
                path: path.to_owned(),
                source,
            })?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        if api_version != Some("registryx.io/v1alpha1") || kind != Some("ImageSigningPolicy") {
            return Err(Error::NotAPolicy {
                path: path.to_owned(),
                found: format!(
                    "{} {}",
                    kind.unwrap_or("<none>"),
                    api_version.unwrap_or("<none>")
                ),
            });
        }
        let policy = serde_yaml::from_value(value).map_err(|source| Error::PolicyFile {
            path: path.to_owned(),
            source,
        })?;
        policies.push(policy);
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_policy_with_defaults() {
        let text = "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: p}\n\
                    spec:\n  images: ['r.example/**']\n  authorities: [{name: k, key: {data: x}}]\n";
        let policies = parse_documents(Path::new("p.yaml"), text).unwrap();
        assert_eq!(policies.len(), 1);
        let spec = &policies[0].spec;
        assert_eq!(spec.mode, Mode::Enforce);
        assert!(spec.signature_required);
        assert_eq!(spec.multi_arch, MultiArch::Index);
        assert_eq!(
            spec.authorities[0].key.as_ref().unwrap().data.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn refuses_another_kind_naming_it() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
        let error = parse_documents(Path::new("c.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("found ConfigMap v1"), "{error}");
    }

    #[test]
    fn reports_an_unknown_mode() {
        let text = "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: p}\n\
                    spec: {images: ['a'], mode: audit}\n";
        let error = parse_documents(Path::new("p.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("p.yaml") && error.contains("audit"),
            "{error}"
        );
    }

    #[test]
    fn crd_has_the_printer_columns_and_one_of_rules() {
        let yaml = crd_yaml().unwrap();
        for needle in [
            "shortNames",
            "isp",
            "Ready",
            "Authorities",
            "x-kubernetes-validations",
            "exactly one of key or keyless",
            "Cluster",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }
}
