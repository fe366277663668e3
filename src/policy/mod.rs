//! Policies: the `ImageSigningPolicy` resource types and loading them from YAML files, the same files
//! that `kubectl apply` takes.

mod access;
pub mod authority;
mod choice;
mod compiled;
mod crd;
pub mod dir;
mod globs;
mod snapshot;

use std::path::Path;

pub use access::CompiledAccess;
pub use choice::{PolicyChoice, choose_policies, governing_policies};
pub use compiled::{CompiledPolicy, PolicyError, PolicySet, compile};
pub use crd::*;
pub use globs::{ImageMatcher, NormalizedGlob, normalize_glob};
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
        let policy = deserialize_strictly(value).map_err(|source| Error::PolicyFile {
            path: path.to_owned(),
            source,
        })?;
        policies.push(policy);
    }
    Ok(policies)
}

/// Deserializes one policy document, refusing any field the types do not know, with its path and the
/// nearest known field: `spec.mutateDigset: unknown field; did you mean mutateDigest?`.
///
/// serde skips unknown fields silently, so a typo would turn a protection off without a word (an
/// `authoritys:` list leaves the policy without its keys). In a cluster the API server's strict field
/// validation refuses the same documents at `kubectl apply` (its schema is the CRD's); files read by
/// `verify --policy` and `serve --policy-dir` go through here and are refused alike. The CRD types
/// themselves keep accepting unknown fields (`deny_unknown_fields` would change the generated schema,
/// and objects the API server already stored must still be read).
fn deserialize_strictly(
    value: serde_yaml::Value,
) -> std::result::Result<ImageSigningPolicy, serde_yaml::Error> {
    let mut unknown: Vec<String> = Vec::new();
    let parsed: std::result::Result<ImageSigningPolicy, _> =
        serde_ignored::deserialize(value, |path| unknown.push(field_path(&path)));
    // The root's apiVersion and kind were checked by the caller; kube's generated type skips them.
    unknown.retain(|path| path != "apiVersion" && path != "kind");
    if unknown.is_empty() {
        return parsed;
    }
    let schema = serde_json::to_value(ImageSigningPolicy::crd()).unwrap_or_default();
    let schema = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let described: Vec<String> = unknown
        .iter()
        .map(|path| match suggestion(schema, path) {
            Some(known) => format!("{path}: unknown field; did you mean {known}?"),
            None => format!("{path}: unknown field"),
        })
        .collect();
    // A misspelt required field (`sourc:`) also leaves one missing: the unknown one is the cause.
    let also = match parsed {
        Ok(_) => String::new(),
        Err(error) => format!(" (and so: {error})"),
    };
    Err(serde::de::Error::custom(format!(
        "{}{also}",
        described.join(", ")
    )))
}

/// `spec.authorities[0].keyy`, as kubectl names a field.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// The known field nearest to the unknown one at `path`, from the CRD's own schema: the field names a
/// user can write are exactly its properties.
fn suggestion(schema: &serde_json::Value, path: &str) -> Option<String> {
    let mut node = schema;
    let mut parts: Vec<&str> = path.split('.').collect();
    let unknown = parts.pop()?;
    for part in parts {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (part, false),
        };
        node = &node["properties"][name];
        if indexed {
            node = &node["items"];
        }
    }
    let unknown = unknown
        .split('[')
        .next()
        .unwrap_or(unknown)
        .to_ascii_lowercase();
    node["properties"]
        .as_object()?
        .keys()
        .map(|known| {
            (
                crate::rego::edit_distance(&unknown, &known.to_ascii_lowercase()),
                known,
            )
        })
        .filter(|(distance, known)| *distance <= 2.max(known.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known.clone())
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
                    spec: {images: ['a'], mode: dryrun}\n";
        let error = parse_documents(Path::new("p.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("p.yaml") && error.contains("dryrun"),
            "{error}"
        );
    }

    /// A typo in a field name is refused with the field's path and the nearest known field, at every
    /// depth: serde alone would skip it and the policy would lose what the field meant.
    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let head =
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: p}\n";
        for (spec, expected) in [
            (
                "spec:\n  images: ['r.example/**']\n  mutateDigset: false\n  authorities: [{name: k, key: {data: x}}]\n",
                "spec.mutateDigset: unknown field; did you mean mutateDigest?",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  authoritys: [{name: k, key: {data: x}}]\n",
                "spec.authoritys: unknown field; did you mean authorities?",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  authorities: [{name: k, key: {data: x}, transparencyLogs: {}}]\n",
                "spec.authorities[0].transparencyLogs: unknown field; did you mean transparencyLog?",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  authorities: [{name: k, key: {data: x}}, {name: j, key: {secretref: {name: s}}}]\n",
                "spec.authorities[1].key.secretref: unknown field; did you mean secretRef?",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  signatureRequired: false\n  registry: {insecur: true}\n",
                "spec.registry.insecur: unknown field; did you mean insecure?",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  signatureRequired: false\n  rego: {modules: [{name: a, sourc: x}]}\n",
                "spec.rego.modules[0].sourc: unknown field",
            ),
            (
                "spec:\n  images: ['r.example/**']\n  signatureRequired: false\n  colour: blue\n",
                "spec.colour: unknown field",
            ),
        ] {
            let error = parse_documents(Path::new("p.yaml"), &format!("{head}{spec}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("p.yaml") && error.contains(expected),
                "{expected:?} not in: {error}"
            );
        }
        // Unknown fields of metadata are refused too (kubectl's strict validation refuses them).
        let error = parse_documents(
            Path::new("p.yaml"),
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: p, lables: {a: b}}\nspec: {images: ['a'], signatureRequired: false}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("metadata.lables: unknown field"), "{error}");
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
