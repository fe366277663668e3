//! A policy checked and prepared for admission: globs compiled, authorities' keys and trust roots
//! parsed. Compiling is where every mistake in a policy is found and named; what compiles only runs.

use std::sync::Arc;

use super::access::CompiledAccess;
use super::globs::ImageMatcher;
use super::{ImageSigningPolicy, Mode, MultiArch, RegoRules};
use crate::policy::authority::{self, CompiledAuthority, SecretSource};
use crate::registry::{DockerConfig, ImageRef};
use crate::rego::RegoPolicy;

/// Why a policy cannot be used; the message names the field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("spec.images is empty: name at least one image glob")]
    NoImages,
    #[error("spec.images: glob {glob:?} does not compile: {reason}")]
    Glob { glob: String, reason: String },
    #[error("spec.authorities: {0}")]
    Authority(#[from] authority::AuthorityError),
    #[error("spec.signatureRequired is true but spec.authorities is empty")]
    NoAuthority,
    #[error("spec.registry: {0}")]
    Registry(String),
    #[error("spec.rego: {0}")]
    Rego(String),
    #[error("spec.namespaceSelector: {0}")]
    NamespaceSelector(String),
}

#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: String,
    /// `metadata.uid` (none for files loaded with `--policy-dir` or `verify --policy`).
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub mode: Mode,
    pub image_globs: Vec<String>,
    images: ImageMatcher,
    /// `spec.namespaceSelector` in kube's selector form (see [`super::in_scope`]).
    pub namespace_selector: Option<kube::core::Selector>,
    pub signature_required: bool,
    pub authorities: Vec<CompiledAuthority>,
    pub registry: CompiledAccess,
    pub multi_arch: MultiArch,
    pub mutate_digest: bool,
    /// Prepared once; cloned per evaluation.
    pub rego: Option<Arc<RegoPolicy>>,
}

impl CompiledPolicy {
    /// Whether the policy's globs name `image` by its repository, tag or an explicit digest glob (the
    /// namespace is checked by the snapshot).
    pub fn governs(&self, image: &ImageRef) -> bool {
        self.images.matches(image)
    }

    /// Whether only the rule "a glob over tags also governs the repository's digests" makes the policy
    /// govern `image` (see [`super::governing_policies`]).
    pub fn governs_by_digest(&self, image: &ImageRef) -> bool {
        self.images.matches_by_digest(image)
    }

    /// The message of the Ready condition: that the policy is enforced, and what it does not check
    /// that it could (an authority whose certificates' SCTs are not checked).
    pub fn ready_message(&self) -> String {
        let mut message = "the policy is enforced".to_owned();
        for caveat in self.authorities.iter().filter_map(|a| a.caveat()) {
            message.push_str("; ");
            message.push_str(&caveat);
        }
        message
    }
}
/// Compiles `policy`, reading referenced Secrets through `secrets`.
pub fn compile(
    policy: &ImageSigningPolicy,
    secrets: &dyn SecretSource,
    default_namespace: &str,
) -> Result<CompiledPolicy, PolicyError> {
    let spec = &policy.spec;
    let images = ImageMatcher::new(&spec.images)?;
    if spec.signature_required && spec.authorities.is_empty() {
        return Err(PolicyError::NoAuthority);
    }
    let authorities = spec
        .authorities
        .iter()
        .map(|a| authority::compile(a, secrets, default_namespace))
        .collect::<Result<Vec<_>, _>>()?;

    let access = spec.registry.clone().unwrap_or_default();
    let credentials = match &access.credentials_secret_ref {
        Some(secret) => {
            let namespace = secret.namespace.as_deref().unwrap_or(default_namespace);
            let bytes = secrets
                .secret_value(namespace, &secret.name, ".dockerconfigjson")
                .map_err(|e| PolicyError::Registry(format!("credentialsSecretRef: {e}")))?;
            let config = DockerConfig::parse(&bytes).map_err(|e| {
                PolicyError::Registry(format!(
                    "credentialsSecretRef {namespace}/{}: {e}",
                    secret.name
                ))
            })?;
            // One Secret may hold credentials for several registries; the image's own is picked at use.
            Some(config)
        }
        None => None,
    };
    let registry = CompiledAccess {
        insecure: access.insecure,
        ca_bundle: access.ca_bundle.clone(),
        credentials,
        registryx_api: access.registryx_api.clone(),
        token_hosts: access
            .token_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .collect(),
        redirect_hosts: access
            .redirect_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .collect(),
    };
    let rego = match &spec.rego {
        Some(rules) => compile_rego(rules, secrets, default_namespace)?,
        None => None,
    };
    // An operator the API server's schema lets through but no selector knows makes the policy not
    // Ready (and it then refuses in every namespace), never a selector that matches nothing.
    let namespace_selector = spec
        .namespace_selector
        .clone()
        .map(kube::core::Selector::try_from)
        .transpose()
        .map_err(|e| PolicyError::NamespaceSelector(e.to_string()))?;
    if let Some(bundle) = &registry.ca_bundle
        && !bundle.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(PolicyError::Registry(
            "caBundle holds no PEM certificate".into(),
        ));
    }
    Ok(CompiledPolicy {
        name: policy.metadata.name.clone().unwrap_or_default(),
        uid: policy.metadata.uid.clone(),
        generation: policy.metadata.generation,
        mode: spec.mode,
        image_globs: spec.images.clone(),
        images,
        namespace_selector,
        signature_required: spec.signature_required,
        authorities,
        registry,
        multi_arch: spec.multi_arch,
        mutate_digest: spec.mutate_digest,
        rego,
    })
}

/// Inline modules and those of the referenced ConfigMap (every key a module), prepared once.
fn compile_rego(
    rules: &RegoRules,
    sources: &dyn SecretSource,
    default_namespace: &str,
) -> Result<Option<Arc<RegoPolicy>>, PolicyError> {
    let mut modules: Vec<(String, String)> = rules
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.source.clone()))
        .collect();
    if let Some(reference) = &rules.config_map_ref {
        let namespace = reference.namespace.as_deref().unwrap_or(default_namespace);
        let data = sources
            .config_map(namespace, &reference.name)
            .map_err(|e| PolicyError::Rego(format!("configMapRef: {e}")))?;
        modules.extend(data);
    }
    if modules.is_empty() {
        return Ok(None);
    }
    RegoPolicy::compile(&modules)
        .map(|policy| Some(Arc::new(policy)))
        .map_err(|e| PolicyError::Rego(e.to_string()))
}
/// Shared, immutable compiled policies.
pub type PolicySet = Arc<Vec<Arc<CompiledPolicy>>>;
