//! The `ImageSigningPolicy` custom resource (registryx.io/v1alpha1, cluster-scoped).
//!
//! These types are the single source of the CRD: `registryx-guard crdgen` prints the schema derived from
//! them, and CI fails when crds/ drifts from it. Everything the API server can check on its own (enums,
//! required fields, one-of choices) is expressed here as schema or CEL rules, so that a malformed policy is
//! refused at `kubectl apply` time instead of surfacing later as a status condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a cluster requires of the images it runs: which images (`images`, `namespaceSelector`), who must
/// have signed them (`authorities`), what else must hold (`rego`), and how to reach their registry.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "registryx.io",
    version = "v1alpha1",
    kind = "ImageSigningPolicy",
    plural = "imagesigningpolicies",
    shortname = "isp",
    status = "ImageSigningPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Violations","type":"integer","jsonPath":".status.violations"}"#,
    printcolumn = r#"{"name":"Authorities","type":"string","jsonPath":".spec.authorities[*].name"}"#,
    printcolumn = r#"{"name":"Images","type":"string","jsonPath":".spec.images"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("(has(self.signatureRequired) && !self.signatureRequired) || (has(self.authorities) && size(self.authorities) > 0)").message("signatureRequired needs at least one authority"))]
#[serde(rename_all = "camelCase")]
pub struct ImageSigningPolicySpec {
    /// Image references this policy governs, as globs over the canonical reference
    /// (`registry/repository:tag`): `*` matches within one path segment, `**` also crosses `/`. Globs
    /// are normalised as references are: `nginx` is `docker.io/library/nginx`, hosts are
    /// case-insensitive, `:443` is no port, and a glob over tags (`repo:*`) also governs the
    /// repository's digests (`repo@sha256:...`). A glob that can never match makes the policy not Ready.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(
        validation = Rule::new("self.all(g, !g.contains('://'))").message("spec.images: a glob names image references (registry/repository:tag), not URLs: drop the scheme"),
        validation = Rule::new("self.all(g, !g.matches('[[:space:]]'))").message("spec.images: a glob with whitespace can never match an image reference"),
        validation = Rule::new("self.all(g, !g.matches('^[^/]*/[^:@]*[A-Z]') && (g.contains('/') || !g.matches('^[^:@]*[A-Z]')))").message("spec.images: repository names are lower case; a glob with upper case in the repository can never match (host names may be any case)")
    )]
    pub images: Vec<String>,

    /// Only workloads in namespaces whose labels match are governed; all namespaces when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// `enforce` refuses a workload whose images fail; `warn` admits it with an admission warning;
    /// `audit` admits it silently and only the background audit reports it (status `violations`,
    /// Events on the pods, metrics): a dry run of `enforce` on what already runs.
    #[serde(default)]
    pub mode: Mode,

    /// When true (the default), at least one authority must verify a signature of the image. When false,
    /// verification results only feed the Rego rules.
    #[serde(default = "default_true")]
    pub signature_required: bool,

    /// Who may sign: any one authority verifying a signature is enough.
    #[serde(default)]
    pub authorities: Vec<Authority>,

    /// Rego rules evaluated for every governed image (package `registry` or `registryx.policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego: Option<RegoRules>,

    /// How to reach the registry that holds the governed images and their signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryAccess>,

    /// When true (the default), admitted tags are pinned to the digest that was verified
    /// (`repo:tag@sha256:...`) by the mutating webhook, so the node pulls exactly what was checked, and
    /// validation refuses a tag that reaches it unpinned. When false (GitOps tools that cannot accept a
    /// changed image field), the verified digest is recorded in the `registryx.io/verified-digests`
    /// annotation and a later admission whose tag moved is refused; the tag can still move between
    /// admission and pull.
    #[serde(default = "default_true")]
    pub mutate_digest: bool,

    /// For a multi-platform image index: `index` (default, what `cosign sign` signs) requires a signature
    /// on the index digest; `everyPlatform` requires one on every platform manifest as well.
    #[serde(default)]
    pub multi_arch: MultiArch,
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
    /// Never refuses nor warns at admission; the background audit reports what it would refuse.
    Audit,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MultiArch {
    #[default]
    Index,
    EveryPlatform,
}

/// One trusted signer: a public key, or a keyless identity certified by a Fulcio-style CA.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.key) != has(self.keyless)").message("an authority needs exactly one of key or keyless"))]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// Names the authority in status, evidence and refusal messages.
    #[schemars(length(min = 1))]
    pub name: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyAuthority>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessAuthority>,

    /// Whether a transparency-log (Rekor) entry must accompany the signature. Default: required for
    /// keyless, not required for keys. Entries are verified offline from the bundle or SET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparency_log: Option<TransparencyLog>,

    /// Attestations this authority must also have signed for the verified digest, by predicate type.
    /// For each entry, one attestation suffices: a DSSE envelope (legacy `sha256-<hex>.att` tag, or a
    /// sigstore bundle among the referrers) whose signature verifies against this authority, whose
    /// in-toto `subject` names the digest and whose `predicateType` is the one required. What the
    /// predicates say is for Rego (`input.attestations["<predicateType>"]`). The image signature is
    /// still required; a signature never counts as an attestation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<AttestationRequirement>,
}

/// A required attestation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttestationRequirement {
    /// `cosign attest --type`'s short names (`slsaprovenance`, `slsaprovenance02`, `slsaprovenance1`,
    /// `spdx`, `spdxjson`, `cyclonedx`, `vuln`, `openvex`, `link`, `custom`) or a predicate type URI.
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub kind: String,
}

/// A PEM public key (ECDSA P-256/P-384, RSA, Ed25519), inline or from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.data) != has(self.secretRef)").message("a key needs exactly one of data or secretRef"))]
#[serde(rename_all = "camelCase")]
pub struct KeyAuthority {
    /// The PEM text of the public key (`cosign.pub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,

    /// A Secret that holds the PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// Defaults to the namespace registryx-guard runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Defaults to `cosign.pub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Keyless signing: a short-lived certificate from a Fulcio-style CA that names the signer's identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeylessAuthority {
    /// Accepted signer identities; any one matching is enough.
    #[schemars(length(min = 1))]
    pub identities: Vec<Identity>,
    /// The roots the certificate must chain to, given in full so that no network is needed at start.
    pub trust_root: TrustRoot,
    /// Certificate transparency: whether the signing certificate must carry an embedded SCT (RFC 6962)
    /// that a CT log of the trust root signed (`trustRoot.ctLogKey`, or the `ctlogs` of
    /// `trustRoot.trustedRootJSON`). Default: required whenever the trust root names a CT log key, as
    /// cosign does; without one, SCTs are not checked. `required: false` turns the check off (the
    /// policy's Ready message then says that SCTs are not checked); `required: true` without a CT log
    /// key makes the policy not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct_log: Option<CtLog>,
}

/// Whether a keyless certificate must carry an embedded SCT from a trusted CT log, checked offline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CtLog {
    /// `false`: embedded SCTs are not checked, for a CA that logs to no CT log.
    pub required: bool,
}

/// An OIDC issuer and subject, each given exactly or as a regular expression.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.issuer) != has(self.issuerRegExp)").message("an identity needs exactly one of issuer or issuerRegExp"))]
#[x_kube(validation = Rule::new("has(self.subject) != has(self.subjectRegExp)").message("an identity needs exactly one of subject or subjectRegExp"))]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_reg_exp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_reg_exp: Option<String>,
}

/// Trust material for keyless verification: a sigstore `trusted_root.json`, or the PEMs it would hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.trustedRootJSON) ? 1 : 0) + (has(self.fulcioCA) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1").message("a trust root needs exactly one of trustedRootJSON, configMapRef or fulcioCA"))]
#[serde(rename_all = "camelCase")]
pub struct TrustRoot {
    /// The content of a sigstore `trusted_root.json`.
    #[serde(
        default,
        rename = "trustedRootJSON",
        skip_serializing_if = "Option::is_none"
    )]
    pub trusted_root_json: Option<String>,
    /// A ConfigMap that holds a sigstore `trusted_root.json` (key `trusted_root.json` by default), so
    /// that one trust root serves many policies and is replaced without editing them:
    /// `kubectl create configmap sigstore-trusted-root -n registryx-guard --from-file=trusted_root.json`.
    /// `registryx-guard verify` without `--cluster` reads the file of that key name in the current
    /// directory instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// PEM certificates of the Fulcio CA chain (root last).
    #[serde(default, rename = "fulcioCA", skip_serializing_if = "Option::is_none")]
    pub fulcio_ca: Option<String>,
    /// PEM public key of the Rekor log, to check signed entry timestamps offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekor_key: Option<String>,
    /// PEM public key of the certificate transparency log (Fulcio's CT log): the certificate's embedded
    /// SCT must verify with it (see `keyless.ctLog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct_log_key: Option<String>,
}

/// Whether a Rekor transparency-log entry must accompany a signature, checked offline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransparencyLog {
    pub required: bool,
    /// PEM public key of the Rekor log (for key authorities; keyless ones take it from their trustRoot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekor_key: Option<String>,
}

/// Rego modules, inline or from a ConfigMap (every key a module).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegoRules {
    #[serde(default)]
    pub modules: Vec<RegoModule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ObjectRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegoModule {
    #[schemars(length(min = 1))]
    pub name: String,
    pub source: String,
}

/// A key of a ConfigMap in a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    pub name: String,
    /// Defaults to the namespace registryx-guard runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Defaults to `trusted_root.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A namespaced object by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub name: String,
    /// Defaults to the namespace registryx-guard runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Registry access for the governed images.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAccess {
    /// A `kubernetes.io/dockerconfigjson` Secret with pull credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<ObjectRef>,
    /// PEM CA certificates trusted for the registry, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Plain HTTP, for development registries only.
    #[serde(default)]
    pub insecure: bool,
    /// Base URL of the RegistryX REST API (`https://registryx.example.com`); when set,
    /// `input.vulnerabilities` is filled from it for Rego.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registryx_api: Option<String>,
    /// Hosts other than the registry's own whose token endpoint (the `realm` of the registry's 401
    /// challenge) may receive this policy's credentials, e.g. `auth.example.com`. A realm on any other
    /// host is refused, and a realm on localhost is always mapped onto the registry's own host.
    /// Docker Hub's `auth.docker.io` is allowed for `docker.io` without being named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub token_hosts: Vec<String>,
    /// Hosts other than the registry's own that its redirects may lead to: the blob storage or CDN it
    /// hands downloads to (`*.s3.amazonaws.com`, `storage.googleapis.com`,
    /// `pkg-containers.githubusercontent.com`). A redirect anywhere else is not followed: the webhook
    /// connects only to hosts a policy names. `*.example.com` is any host under example.com. Docker
    /// Hub's CDN is allowed for `docker.io` without being named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub redirect_hosts: Vec<String>,
}

/// What the controller last concluded about the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSigningPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Running pods (and workloads with no pod yet) that this policy refuses now, as the background
    /// audit's last completed pass found them: what `mode: enforce` would refuse. Absent until a pass
    /// completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<u32>,
    /// The first few of them (at most five), each with the image and the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offenders: Vec<Offender>,
}

/// One running pod (or pod-less workload) that a policy refuses now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offender {
    /// `namespace/pod`, or `Kind namespace/name` for a workload that has no pod yet.
    pub pod: String,
    pub container: String,
    pub image: String,
    /// The refusal reason's label (`no_signature`, `rego`, ...: README's table).
    pub reason: String,
}
