//! A policy checked and prepared for admission: globs compiled, authorities' keys and trust roots
//! parsed. Compiling is where every mistake in a policy is found and named; what compiles only runs.

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{ImageSigningPolicy, Mode, MultiArch, RegoRules};
use crate::registry::{DockerConfig, ImageRef, RegistryConfig};
use crate::rego::RegoPolicy;
use crate::verify::authority::{self, CompiledAuthority, SecretSource};

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
}

#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub generation: Option<i64>,
    pub mode: Mode,
    pub image_globs: Vec<String>,
    images: ImageMatcher,
    pub namespace_selector: Option<LabelSelector>,
    pub signature_required: bool,
    pub authorities: Vec<CompiledAuthority>,
    pub registry: RegistryAccess,
    pub multi_arch: MultiArch,
    pub mutate_digest: bool,
    /// Prepared once; cloned per evaluation.
    pub rego: Option<Arc<RegoPolicy>>,
}

impl CompiledPolicy {
    /// Whether the policy governs `image` (its globs; the namespace is checked by the snapshot).
    pub fn governs(&self, image: &ImageRef) -> bool {
        self.images.matches(image)
    }
}

/// A policy's `images` globs. Globs are matched against `registry/repository:tag`,
/// `registry/repository@digest` and `registry/repository`, so that `r.example/prod/**` and
/// `r.example/prod/api:*` both mean what they say.
#[derive(Clone, Debug)]
pub struct ImageMatcher {
    set: GlobSet,
}

impl ImageMatcher {
    /// Compiles the globs; `*` stays within one path segment, `**` crosses `/`.
    pub fn new(globs: &[String]) -> Result<ImageMatcher, PolicyError> {
        if globs.is_empty() {
            return Err(PolicyError::NoImages);
        }
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            let compiled = GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| PolicyError::Glob {
                    glob: glob.clone(),
                    reason: e.kind().to_string(),
                })?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|e| PolicyError::Glob {
            glob: globs.join(", "),
            reason: e.to_string(),
        })?;
        Ok(ImageMatcher { set })
    }

    pub fn matches(&self, image: &ImageRef) -> bool {
        let name = image.name();
        let mut candidates = vec![name.clone()];
        if let Some(tag) = &image.tag {
            candidates.push(format!("{name}:{tag}"));
        }
        if let Some(digest) = &image.digest {
            candidates.push(format!("{name}@{digest}"));
        }
        candidates
            .iter()
            .any(|candidate| self.set.is_match(candidate))
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
    let registry = RegistryAccess {
        insecure: access.insecure,
        ca_bundle: access.ca_bundle.clone(),
        credentials,
        registryx_api: access.registryx_api.clone(),
    };
    let rego = match &spec.rego {
        Some(rules) => compile_rego(rules, secrets, default_namespace)?,
        None => None,
    };
    if let Some(bundle) = &registry.ca_bundle
        && !bundle.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(PolicyError::Registry(
            "caBundle holds no PEM certificate".into(),
        ));
    }
    Ok(CompiledPolicy {
        name: policy.metadata.name.clone().unwrap_or_default(),
        generation: policy.metadata.generation,
        mode: spec.mode,
        image_globs: spec.images.clone(),
        images,
        namespace_selector: spec.namespace_selector.clone(),
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

/// How a policy reaches its registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryAccess {
    pub insecure: bool,
    pub ca_bundle: Option<String>,
    /// Pull credentials from the policy's `credentialsSecretRef`, by registry.
    pub credentials: Option<DockerConfig>,
    /// RegistryX's REST API, for `input.vulnerabilities`.
    pub registryx_api: Option<String>,
}

impl RegistryAccess {
    /// The client configuration for `image`: the policy's credentials for its registry, else `fallback`'s
    /// (the command line's Docker config).
    pub fn config_for(&self, image: &ImageRef, fallback: Option<&DockerConfig>) -> RegistryConfig {
        let credentials = self
            .credentials
            .as_ref()
            .and_then(|config| config.credentials_for(&image.registry))
            .or_else(|| fallback.and_then(|config| config.credentials_for(&image.registry)));
        RegistryConfig {
            insecure: self.insecure,
            ca_bundle: self.ca_bundle.clone(),
            credentials,
            ..RegistryConfig::default()
        }
    }
}

/// Shared, immutable compiled policies.
pub type PolicySet = Arc<Vec<Arc<CompiledPolicy>>>;
