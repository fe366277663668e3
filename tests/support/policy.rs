//! Policies for tests, built with the crate's own `ImageSigningPolicy` types and written as the YAML (or
//! object) a user would apply: a test says which authority, images and rules it needs, never how many
//! spaces indent them.

use std::sync::Arc;

use registryx_guard::policy::{
    Authority, CompiledPolicy, CtLog, Identity, ImageSigningPolicy, ImageSigningPolicySpec,
    KeyAuthority, KeylessAuthority, Mode, MultiArch, RegoModule, RegoRules, TransparencyLog,
    TrustRoot,
};

/// An `ImageSigningPolicy` with one authority over the images of one plain-HTTP registry. The defaults
/// are those of most tests: policy `signed` with key authority `release`, or policy `keyless` with
/// keyless authority `ci`; images `<host>/**`.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    name: String,
    spec: ImageSigningPolicySpec,
}

impl PolicySpec {
    /// Policy `name` over `<host>/**` of a plain-HTTP registry, with no authority yet.
    pub fn new(name: &str, host: &str) -> PolicySpec {
        let policy = PolicySpec {
            name: name.into(),
            spec: ImageSigningPolicySpec {
                images: vec![format!("{host}/**")],
                namespace_selector: None,
                mode: Mode::Enforce,
                signature_required: true,
                authorities: Vec::new(),
                rego: None,
                // `registry: {insecure: true}`: every test registry speaks plain HTTP unless said.
                registry: Some(Default::default()),
                mutate_digest: true,
                multi_arch: MultiArch::Index,
            },
        };
        policy.insecure(true)
    }

    /// Policy `signed`: authority `release` trusts the public key `pem` for every image of `host`.
    pub fn key(host: &str, pem: &str) -> PolicySpec {
        PolicySpec::new("signed", host).key_authority("release", pem)
    }

    /// Policy `keyless`: authority `ci` accepts the certificates `issuer` issued to `subject` for
    /// every image of `host`; add its trust root with [`PolicySpec::fulcio_ca`] and the like.
    pub fn keyless(host: &str, issuer: &str, subject: &str) -> PolicySpec {
        PolicySpec::new("keyless", host).keyless_authority("ci", issuer, subject)
    }

    /// Adds an authority that trusts the public key `pem`.
    pub fn key_authority(mut self, name: &str, pem: &str) -> PolicySpec {
        self.spec.authorities.push(Authority {
            name: name.into(),
            key: Some(KeyAuthority {
                data: Some(pem.into()),
                secret_ref: None,
            }),
            keyless: None,
            transparency_log: None,
            attestations: Vec::new(),
        });
        self
    }

    /// Adds a keyless authority accepting exactly `issuer` and `subject`, with an empty trust root.
    pub fn keyless_authority(mut self, name: &str, issuer: &str, subject: &str) -> PolicySpec {
        self.spec.authorities.push(Authority {
            name: name.into(),
            key: None,
            keyless: Some(KeylessAuthority {
                identities: vec![Identity {
                    issuer: Some(issuer.into()),
                    issuer_reg_exp: None,
                    subject: Some(subject.into()),
                    subject_reg_exp: None,
                }],
                trust_root: TrustRoot {
                    trusted_root_json: None,
                    config_map_ref: None,
                    fulcio_ca: None,
                    rekor_key: None,
                    ct_log_key: None,
                },
                ct_log: None,
            }),
            transparency_log: None,
            attestations: Vec::new(),
        });
        self
    }

    /// Adds a keyless authority accepting the issuers and subjects that match these regular expressions.
    pub fn keyless_authority_matching(
        self,
        name: &str,
        issuer_reg_exp: &str,
        subject_reg_exp: &str,
    ) -> PolicySpec {
        let mut policy = self.keyless_authority(name, "", "");
        policy.last_authority().keyless.as_mut().unwrap().identities = vec![Identity {
            issuer: None,
            issuer_reg_exp: Some(issuer_reg_exp.into()),
            subject: None,
            subject_reg_exp: Some(subject_reg_exp.into()),
        }];
        policy
    }

    pub fn named(mut self, name: &str) -> PolicySpec {
        self.name = name.into();
        self
    }

    /// The `images` globs, instead of `<host>/**`.
    pub fn images<'a>(mut self, globs: impl IntoIterator<Item = &'a str>) -> PolicySpec {
        self.spec.images = globs.into_iter().map(str::to_owned).collect();
        self
    }

    /// The last authority also requires attestations of these types (`cosign attest --type` names or
    /// URIs).
    pub fn requiring_attestations<'a>(
        mut self,
        types: impl IntoIterator<Item = &'a str>,
    ) -> PolicySpec {
        self.last_authority().attestations = types
            .into_iter()
            .map(|kind| registryx_guard::policy::AttestationRequirement { kind: kind.into() })
            .collect();
        self
    }

    /// Renames the last authority.
    pub fn authority_named(mut self, name: &str) -> PolicySpec {
        self.last_authority().name = name.into();
        self
    }

    fn last_authority(&mut self) -> &mut Authority {
        self.spec.authorities.last_mut().expect("no authority yet")
    }

    fn last_keyless(&mut self) -> &mut KeylessAuthority {
        self.last_authority()
            .keyless
            .as_mut()
            .expect("the last authority is not keyless")
    }

    fn trust_root(&mut self) -> &mut TrustRoot {
        &mut self.last_keyless().trust_root
    }

    /// The keyless authority's `trustRoot.fulcioCA`: the PEM chain that certifies its signers.
    pub fn fulcio_ca(mut self, pem: &str) -> PolicySpec {
        self.trust_root().fulcio_ca = Some(pem.into());
        self
    }

    /// The keyless authority's `trustRoot.rekorKey`.
    pub fn rekor_key(mut self, pem: &str) -> PolicySpec {
        self.trust_root().rekor_key = Some(pem.into());
        self
    }

    /// The keyless authority's `trustRoot.ctLogKey`: the CT log whose SCTs its certificates carry.
    pub fn ct_log_key(mut self, pem: &str) -> PolicySpec {
        self.trust_root().ct_log_key = Some(pem.into());
        self
    }

    /// The keyless authority's `ctLog.required`: whether its certificates must carry a verified SCT.
    pub fn ct_log_required(mut self, required: bool) -> PolicySpec {
        self.last_keyless().ct_log = Some(CtLog { required });
        self
    }

    /// The keyless authority's `trustRoot.trustedRootJSON`.
    pub fn trusted_root_json(mut self, json: &str) -> PolicySpec {
        self.trust_root().trusted_root_json = Some(json.into());
        self
    }

    /// The last authority's `transparencyLog`, with the Rekor key's PEM when given.
    pub fn transparency_log(mut self, required: bool, rekor_key: Option<&str>) -> PolicySpec {
        self.last_authority().transparency_log = Some(TransparencyLog {
            required,
            rekor_key: rekor_key.map(str::to_owned),
        });
        self
    }

    pub fn mode(mut self, mode: Mode) -> PolicySpec {
        self.spec.mode = mode;
        self
    }

    pub fn multi_arch(mut self, multi_arch: MultiArch) -> PolicySpec {
        self.spec.multi_arch = multi_arch;
        self
    }

    pub fn mutate_digest(mut self, mutate: bool) -> PolicySpec {
        self.spec.mutate_digest = mutate;
        self
    }

    /// `spec.rego` holding `modules` (name, source) inline.
    pub fn rego(mut self, modules: &[(&str, &str)]) -> PolicySpec {
        self.spec.rego = Some(RegoRules {
            modules: modules
                .iter()
                .map(|(name, source)| RegoModule {
                    name: (*name).into(),
                    source: (*source).into(),
                })
                .collect(),
            config_map_ref: None,
        });
        self
    }

    // `spec.registry` (`policy::RegistryAccess`; its compiled form is `policy::CompiledAccess`).

    /// `registry.insecure`: plain HTTP (the default here: test registries speak it).
    pub fn insecure(mut self, insecure: bool) -> PolicySpec {
        self.spec
            .registry
            .get_or_insert_with(Default::default)
            .insecure = insecure;
        self
    }

    /// `registry.caBundle`: the CA of an HTTPS registry.
    pub fn ca_bundle(mut self, pem: &str) -> PolicySpec {
        self.spec
            .registry
            .get_or_insert_with(Default::default)
            .ca_bundle = Some(pem.into());
        self
    }

    /// `registry.registryxApi`: where RegistryX's REST API answers.
    pub fn registryx_api(mut self, url: &str) -> PolicySpec {
        self.spec
            .registry
            .get_or_insert_with(Default::default)
            .registryx_api = Some(url.into());
        self
    }

    /// `registry.credentialsSecretRef`: the pull Secret (in registryx-guard's namespace) to log in with.
    pub fn credentials_secret_ref(mut self, name: &str) -> PolicySpec {
        self.spec
            .registry
            .get_or_insert_with(Default::default)
            .credentials_secret_ref = Some(registryx_guard::policy::ObjectRef {
            name: name.into(),
            namespace: None,
        });
        self
    }

    /// `registry.redirectHosts`: the hosts the registry's redirects may lead to.
    pub fn redirect_hosts<'a>(mut self, hosts: impl IntoIterator<Item = &'a str>) -> PolicySpec {
        self.spec
            .registry
            .get_or_insert_with(Default::default)
            .redirect_hosts = hosts.into_iter().map(str::to_owned).collect();
        self
    }

    /// Changes anything else of the spec.
    pub fn with(mut self, change: impl FnOnce(&mut ImageSigningPolicySpec)) -> PolicySpec {
        change(&mut self.spec);
        self
    }

    /// The policy object.
    pub fn policy(&self) -> ImageSigningPolicy {
        ImageSigningPolicy::new(&self.name, self.spec.clone())
    }

    /// The policy as the YAML a user applies.
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.policy()).expect("a policy serializes")
    }

    pub fn compile(&self) -> Arc<CompiledPolicy> {
        super::verdicts::compile_policy(&self.yaml())
    }
}

/// Policy `name` over `glob` whose authority `release-key` trusts the key `pem`, from a plain-HTTP
/// registry: what the cluster tests apply with kubectl.
pub fn release_key_policy(name: &str, glob: &str, pem: &str) -> PolicySpec {
    PolicySpec::new(name, "")
        .images([glob])
        .key_authority("release-key", pem)
}
