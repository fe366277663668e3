//! The Rego input document: one per (image, policy), a stable contract that policies are written
//! against (DESIGN.md, "Rego input"). Field names and shapes here are that contract; renaming one breaks
//! users' policies.
//!
//! These types are deliberately independent of the verification and admission modules: the caller
//! copies what it knows into them, and the document says only what registryx-guard itself established.
//! In particular `signed` / `is_signed` are computed from the signatures that verified cryptographically
//! and can never be set from a registry's claim (RegistryX's `isSigned` is never consulted).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One authority's verdict on the image, as `input.signatures[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegoSignature {
    /// The authority's name in the policy.
    pub authority: String,
    /// Whether a signature verified cryptographically against this authority.
    pub verified: bool,
    /// `sha256:` of the public key's DER, for key authorities.
    pub key_id: Option<String>,
    /// The certificate's OIDC issuer, for keyless authorities.
    pub issuer: Option<String>,
    /// The certificate's subject (URI or email SAN), for keyless authorities.
    pub subject: Option<String>,
    /// The Rekor integrated time (Unix seconds), when a transparency-log entry came with the signature.
    pub rekor_integrated_time: Option<i64>,
}

/// A verified attestation's statement, as an entry of `input.attestations["<predicateType>"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegoAttestation {
    /// The in-toto statement's `predicate`, as signed.
    pub predicate: Value,
    /// The name of the authority it verified against.
    pub signer: String,
    /// The Rekor integrated time (Unix seconds), when a verified log entry came with it.
    pub integrated_time: Option<i64>,
}

/// RegistryX's vulnerability summary of the image, as `input.vulnerabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vulnerabilities {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    /// RegistryX's scan status (`completed` once a scan finished). Counts of an unfinished scan are
    /// zeros, so a vulnerability gate should also require `status == "completed"`.
    pub status: String,
}

/// The Kubernetes user who made the request, as `input.request.userInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegoUserInfo {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The admission request, as `input.request`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegoRequest {
    /// The kind of the object admitted: `Pod`, `Deployment`, ...
    pub kind: String,
    /// `CREATE` or `UPDATE`.
    pub operation: String,
    /// The object's name (a Pod created through `generateName` may have none yet).
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub user_info: RegoUserInfo,
}

/// The pod (or pod template) that runs the image, as `input.pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegoPod {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account_name: Option<String>,
}

/// The input document of one (image, policy) evaluation. Build it with struct-update syntax over
/// `RegoInput::default()` (whose `operation` is `"pull"`), then hand [`RegoInput::to_value`] to
/// `RegoPolicy::evaluate`.
///
/// ```json
/// {"operation": "pull", "image": "registryx.example.com/prod/api:1.4",
///  "registry": "registryx.example.com", "repository": "prod/api", "tag": "1.4", "digest": "sha256:...",
///  "signed": true, "is_signed": true,
///  "signatures": [{"authority": "release-key", "verified": true, "keyId": "sha256:...",
///                  "issuer": null, "subject": null, "rekorIntegratedTime": null}],
///  "attestations": {"https://slsa.dev/provenance/v1": [{"predicate": {"buildDefinition": {...}},
///                   "signer": "release-key", "integratedTime": null}]},
///  "vulnerabilities": {"critical": 0, "high": 2, "medium": 5, "low": 9, "status": "completed"},
///  "environment": "prod", "namespace": "payments", "user": "alice",
///  "request": {"kind": "Pod", "operation": "CREATE", "name": "api-7d9", "namespace": "payments",
///              "userInfo": {"username": "alice", "uid": null, "groups": [], "extra": {}}},
///  "pod": {"labels": {}, "annotations": {}, "serviceAccountName": "default"}}
/// ```
///
/// Values registryx-guard does not know are `null` (`vulnerabilities` without a RegistryX API, the
/// request fields for `registryx-guard verify`, `tag` for an image given by digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoInput {
    /// Always `"pull"`: admitting a workload is what makes its node pull the image. RegistryX's guide
    /// writes its rules for `input.operation == "pull"`.
    pub operation: String,
    /// The image reference as written in the workload.
    pub image: String,
    /// The registry host (and port): `registryx.example.com`.
    pub registry: String,
    /// The repository within the registry: `prod/api`.
    pub repository: String,
    pub tag: Option<String>,
    /// The digest that was verified (`sha256:...`).
    pub digest: Option<String>,
    /// Every authority's verdict; `signed` is derived from these.
    pub signatures: Vec<RegoSignature>,
    /// The attestations that verified against a policy's authority for the digest (signature checked,
    /// subject the digest), by predicate type.
    pub attestations: BTreeMap<String, Vec<RegoAttestation>>,
    pub vulnerabilities: Option<Vulnerabilities>,
    /// See [`RegoInput::environment_of`].
    pub environment: Option<String>,
    pub namespace: Option<String>,
    /// The requesting user's name (RegistryX's editor calls it `input.user`).
    pub user: Option<String>,
    pub request: Option<RegoRequest>,
    pub pod: Option<RegoPod>,
}

impl Default for RegoInput {
    fn default() -> Self {
        RegoInput {
            operation: "pull".into(),
            image: String::new(),
            registry: String::new(),
            repository: String::new(),
            tag: None,
            digest: None,
            signatures: Vec::new(),
            attestations: BTreeMap::new(),
            vulnerabilities: None,
            environment: None,
            namespace: None,
            user: None,
            request: None,
            pod: None,
        }
    }
}

impl RegoInput {
    /// Whether at least one signature verified cryptographically: `input.signed` and `input.is_signed`
    /// (the second is the name RegistryX's editor uses; both always agree).
    pub fn signed(&self) -> bool {
        self.signatures.iter().any(|s| s.verified)
    }

    /// `input.environment`: the namespace's `environment` label, else its `env` label, else the
    /// configured default (`--environment`, RegistryX's server-wide POLICY_ENVIRONMENT), else the
    /// namespace's name. Clusters label namespaces `env: prod` (the README's namespaceSelector does),
    /// name them after the environment, or are one environment each; either way a policy reads one
    /// field. None only without a namespace and a default (`verify` with neither flag).
    pub fn environment_of(
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
        default: Option<&str>,
    ) -> Option<String> {
        labels
            .get("environment")
            .or_else(|| labels.get("env"))
            .map(String::as_str)
            .filter(|value| !value.is_empty())
            .or(default.filter(|value| !value.is_empty()))
            .or(namespace)
            .map(str::to_owned)
    }

    /// The document, exactly as policies see it.
    pub fn to_value(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("operation".into(), self.operation.clone().into());
        doc.insert("image".into(), self.image.clone().into());
        doc.insert("registry".into(), self.registry.clone().into());
        doc.insert("repository".into(), self.repository.clone().into());
        doc.insert("tag".into(), optional(&self.tag));
        doc.insert("digest".into(), optional(&self.digest));
        let signed = self.signed();
        doc.insert("signed".into(), signed.into());
        doc.insert("is_signed".into(), signed.into());
        doc.insert(
            "signatures".into(),
            Value::Array(self.signatures.iter().map(signature).collect()),
        );
        doc.insert(
            "attestations".into(),
            Value::Object(
                self.attestations
                    .iter()
                    .map(|(kind, list)| {
                        (
                            kind.clone(),
                            Value::Array(list.iter().map(attestation).collect()),
                        )
                    })
                    .collect(),
            ),
        );
        doc.insert(
            "vulnerabilities".into(),
            self.vulnerabilities
                .as_ref()
                .map_or(Value::Null, vulnerabilities),
        );
        doc.insert("environment".into(), optional(&self.environment));
        doc.insert("namespace".into(), optional(&self.namespace));
        doc.insert("user".into(), optional(&self.user));
        doc.insert(
            "request".into(),
            self.request.as_ref().map_or(Value::Null, request),
        );
        doc.insert("pod".into(), self.pod.as_ref().map_or(Value::Null, pod));
        Value::Object(doc)
    }
}

impl Serialize for RegoInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

// The document is built by hand rather than through serde so that building it cannot fail and the
// field names sit in one place, next to the contract they implement.

fn optional(value: &Option<String>) -> Value {
    value.clone().map_or(Value::Null, Value::String)
}

fn strings(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn signature(s: &RegoSignature) -> Value {
    let mut doc = Map::new();
    doc.insert("authority".into(), s.authority.clone().into());
    doc.insert("verified".into(), s.verified.into());
    doc.insert("keyId".into(), optional(&s.key_id));
    doc.insert("issuer".into(), optional(&s.issuer));
    doc.insert("subject".into(), optional(&s.subject));
    doc.insert(
        "rekorIntegratedTime".into(),
        s.rekor_integrated_time.map_or(Value::Null, Value::from),
    );
    Value::Object(doc)
}

fn attestation(a: &RegoAttestation) -> Value {
    let mut doc = Map::new();
    doc.insert("predicate".into(), a.predicate.clone());
    doc.insert("signer".into(), a.signer.clone().into());
    doc.insert(
        "integratedTime".into(),
        a.integrated_time.map_or(Value::Null, Value::from),
    );
    Value::Object(doc)
}

fn vulnerabilities(v: &Vulnerabilities) -> Value {
    let mut doc = Map::new();
    doc.insert("critical".into(), v.critical.into());
    doc.insert("high".into(), v.high.into());
    doc.insert("medium".into(), v.medium.into());
    doc.insert("low".into(), v.low.into());
    doc.insert("status".into(), v.status.clone().into());
    Value::Object(doc)
}

fn request(r: &RegoRequest) -> Value {
    let mut user = Map::new();
    user.insert("username".into(), r.user_info.username.clone().into());
    user.insert("uid".into(), optional(&r.user_info.uid));
    user.insert(
        "groups".into(),
        Value::Array(
            r.user_info
                .groups
                .iter()
                .cloned()
                .map(Value::String)
                .collect(),
        ),
    );
    user.insert(
        "extra".into(),
        Value::Object(
            r.user_info
                .extra
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::Array(v.iter().cloned().map(Value::String).collect()),
                    )
                })
                .collect(),
        ),
    );
    let mut doc = Map::new();
    doc.insert("kind".into(), r.kind.clone().into());
    doc.insert("operation".into(), r.operation.clone().into());
    doc.insert("name".into(), optional(&r.name));
    doc.insert("namespace".into(), optional(&r.namespace));
    doc.insert("userInfo".into(), Value::Object(user));
    Value::Object(doc)
}

fn pod(p: &RegoPod) -> Value {
    let mut doc = Map::new();
    doc.insert("labels".into(), strings(&p.labels));
    doc.insert("annotations".into(), strings(&p.annotations));
    doc.insert(
        "serviceAccountName".into(),
        optional(&p.service_account_name),
    );
    Value::Object(doc)
}
