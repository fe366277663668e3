//! `registryx-guard verify`: the webhook's decision for images named on the command line or in a
//! manifest, from policy files. The files become a policy snapshot as `serve --policy-dir` makes one,
//! and each image is decided by the webhook's own [`ImageDecider`], so that a policy that is not
//! Ready, an image no policy governs, and every verdict read the same here as in a refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cluster::ClusterView;
use super::cosign_flags::FLAGS_POLICY;
use super::local_files::LocalFiles;
use super::{EXIT_ADMITTED, EXIT_REFUSED, OutputFormat, VerifyArgs, runtime};
use crate::admission::{ImageDecider, ImageDecision, Review, Scope, Unmatched, Workload};
use crate::decide::RequestContext;
use crate::policy::authority::SecretSource;
use crate::policy::{ImageSigningPolicy, PolicySnapshot, shared};
use crate::registry::{DockerConfig, ImageRef};
use crate::verify::{Verifier, VerifierSettings, render_text};

/// Verifications in flight at once for one registry, as the webhook's default.
const MAX_CONCURRENT_VERIFICATIONS: usize = 32;

/// Runs `verify`. Errors are the command's input errors (exit 2); refusals are exit codes.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Files and references are checked in full first, so that a wrong one is reported as such (exit 2)
    // whatever the state of the registry; a policy that does not compile is reported after the
    // decisions, since it refuses the images it governs as the webhook refuses them.
    let mut written: Vec<String> = args.images.clone();
    let mut context = RequestContext::default();
    if let Some(path) = &args.resource {
        let (images, workload) = read_resource(path)?;
        written.extend(images);
        context.pod = Some(workload.pod());
    }
    anyhow::ensure!(
        !written.is_empty(),
        "name at least one image, or a manifest with --resource"
    );
    let mut images: Vec<String> = Vec::new();
    for image in written {
        ImageRef::parse(&image)?;
        if !images.contains(&image) {
            images.push(image);
        }
    }
    let runtime = runtime()?;
    let cluster = match args.cluster {
        true => Some(runtime.block_on(super::cluster::read(
            &args.cluster_namespace,
            args.namespace.as_deref(),
        ))?),
        false => None,
    };
    let mut labels = BTreeMap::new();
    if args.namespace_labels.is_empty()
        && let Some(found) = cluster.as_ref().and_then(|c| c.namespace_labels.clone())
    {
        labels = found;
    }
    for note in cluster.iter().flat_map(|c| &c.notes) {
        eprintln!("note: {note}");
    }
    for pair in &args.namespace_labels {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--namespace-labels: {pair:?} is not key=value"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    context.namespace = args.namespace.clone();
    context.keep_rego_input = true;
    context.namespace_labels = labels.clone();
    context.default_environment = args.environment.clone();
    let parsed: Vec<ImageRef> = images
        .iter()
        .map(|image| ImageRef::parse(image))
        .collect::<Result<_, _>>()?;
    let from_flags = args.cosign.policy(&parsed, &|| {
        runtime.block_on(super::public_good::trusted_root())
    })?;
    let (snapshot, not_usable) = load_policies(&args.policies, from_flags, cluster)?;
    let mut credentials =
        DockerConfig::from_environment().map_err(|e| anyhow::anyhow!("Docker credentials: {e}"))?;
    for note in credentials.ask_helpers(parsed.iter().map(|image| image.registry.as_str())) {
        eprintln!("note: {note}; verifying without those credentials");
    }

    let verifier = Verifier::new(VerifierSettings::default(), Some(credentials));
    let decider = ImageDecider::new(
        shared(snapshot),
        Arc::new(verifier),
        args.unmatched,
        MAX_CONCURRENT_VERIFICATIONS,
    );
    let recorded = BTreeMap::new();
    let scope = Scope {
        // As in admission: with a namespace, only the policies whose namespaceSelector takes it.
        labels: args.namespace.as_ref().map(|_| &labels),
        context: &context,
        recorded: &recorded,
        review: Review::Command,
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds.max(1));
    // Every image at once, through one decider: its clients and caches are shared.
    let decisions = runtime.block_on(futures::future::join_all(
        images
            .iter()
            .map(|image| decider.decide("", image, &scope, deadline)),
    ));
    let admitted = decisions.iter().all(ImageDecision::admitted);
    match args.output {
        OutputFormat::Text => {
            for decision in &decisions {
                print!("{}", text(decision));
            }
        }
        OutputFormat::Json => {
            let mut values: Vec<serde_json::Value> =
                decisions.iter().map(|d| json(d, args.unmatched)).collect();
            let value = if values.len() == 1 {
                values.remove(0)
            } else {
                serde_json::Value::from(values)
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    // A policy file that does not compile is bad input, said after the decisions it changed.
    anyhow::ensure!(not_usable.is_empty(), "{}", not_usable.join("\n"));
    Ok(ExitCode::from(if admitted {
        EXIT_ADMITTED
    } else {
        EXIT_REFUSED
    }))
}

/// The policies of `paths` as one snapshot, and a line for each that is not usable (not Ready).
/// With cosign's flags, `from_flags` is their policy, one more among the files'; with `--cluster`, the
/// cluster's policies are more, and the Secrets and ConfigMaps they name are the cluster's.
fn load_policies(
    paths: &[PathBuf],
    from_flags: Option<ImageSigningPolicy>,
    cluster: Option<ClusterView>,
) -> anyhow::Result<(PolicySnapshot, Vec<String>)> {
    let mut policies = Vec::new();
    // The files each name comes from (one name can be in several).
    let mut origin: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let in_cluster = cluster.as_ref().map(|c| c.guard_namespace.clone());
    let sources: Box<dyn SecretSource> = match cluster {
        Some(cluster) => {
            for policy in cluster.policies {
                let name = policy.metadata.name.clone().unwrap_or_default();
                origin
                    .entry(name)
                    .or_default()
                    .push("the cluster".to_owned());
                policies.push(policy);
            }
            Box::new(cluster.sources)
        }
        // Without a cluster, the current directory's files stand in for its Secrets and ConfigMaps.
        None => Box::new(LocalFiles::new(
            std::env::current_dir().context("cannot read the current directory")?,
        )),
    };

    if let Some(policy) = from_flags {
        origin
            .entry(FLAGS_POLICY.to_owned())
            .or_default()
            .push("cosign's flags".to_owned());
        policies.push(policy);
    }
    for path in paths {
        for mut policy in crate::policy::load_file(path)? {
            let name = policy.metadata.name.clone().unwrap_or_default();
            // A pull Secret lives in the cluster; here the user's own Docker config stands in for it,
            // as it does for cosign.
            if in_cluster.is_none()
                && let Some(registry) = policy.spec.registry.as_mut()
                && let Some(secret) = registry.credentials_secret_ref.take()
            {
                eprintln!(
                    "note: policy {name:?}: registry.credentialsSecretRef ({}) is read in the cluster \
                     only; verify uses your Docker config (DOCKER_CONFIG or ~/.docker/config.json) instead",
                    secret.name
                );
            }
            origin
                .entry(name)
                .or_default()
                .push(path.display().to_string());
            policies.push(policy);
        }
    }
    anyhow::ensure!(
        !policies.is_empty(),
        "no ImageSigningPolicy found in {paths:?}, and no --key or --certificate-identity"
    );
    let guard_namespace = in_cluster.as_deref().unwrap_or("registryx-guard");
    let (snapshot, _) = PolicySnapshot::build(&policies, sources.as_ref(), guard_namespace, 1);
    // From the snapshot, not the results by name: two policies of one name, one broken, must not
    // hide the broken one.
    let not_usable = snapshot
        .not_ready
        .iter()
        .map(|policy| {
            let name = &policy.name;
            let files = origin.get(name).map(|f| f.join(", ")).unwrap_or_default();
            format!("{files}: policy {name:?} is not usable: {}", policy.message)
        })
        .collect();
    Ok((snapshot, not_usable))
}

/// The images of a Pod or workload manifest, and the workload (its pod metadata feeds Rego).
fn read_resource(path: &Path) -> anyhow::Result<(Vec<String>, Workload)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let object: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a YAML or JSON manifest", path.display()))?;
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let workload = Workload::new(kind, object);
    let images = workload
        .images()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((images.into_iter().map(|i| i.image).collect(), workload))
}

/// A decision for a terminal: the verdict when the image was verified, else what admission decided
/// before any verification (the webhook's own words).
fn text(decision: &ImageDecision) -> String {
    if let Some(verdict) = &decision.verdict {
        return render_text(verdict);
    }
    let result = if decision.admitted() {
        "admitted"
    } else {
        "refused"
    };
    let said = match (decision.refusal_text(), decision.warnings.first()) {
        (Some(refusal), _) => refusal.to_owned(),
        (None, Some(warning)) => warning.clone(),
        (None, None) => format!(
            "image {} is governed by no ImageSigningPolicy: admitted without looking it up \
             (--unmatched=allow)",
            decision.image
        ),
    };
    format!("image {}\n  {said}\nresult: {result}\n", decision.image)
}

/// A decision as JSON: the verdict when the image was verified, else the verdict's shape (no digest,
/// no policy) with what admission decided: `reason` (its label), `message`, `warnings`.
fn json(decision: &ImageDecision, unmatched: Unmatched) -> serde_json::Value {
    if let Some(verdict) = &decision.verdict {
        return serde_json::to_value(verdict.as_ref()).unwrap_or_default();
    }
    let canonical = ImageRef::parse(&decision.image).map(|i| i.to_string()).ok();
    serde_json::json!({
        "image": decision.image,
        "canonical": canonical,
        "digest": null,
        "policies": [],
        "admitted": decision.admitted(),
        "reason": decision.label(),
        "message": decision.refusal_text().or(decision.warnings.first().map(String::as_str)),
        "warnings": decision.warnings,
        "unmatched": unmatched,
    })
}
