//! The command line: `serve`, `verify` and `crdgen`. Every flag can also be set from the environment
//! (`RXG_*`), which is how the Helm chart configures the server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admission::Unmatched;
use crate::server::ServeArgs;
use crate::telemetry::LogArgs;

/// Exit code of `verify` when the image is admitted.
pub const EXIT_ADMITTED: u8 = 0;
/// Exit code of `verify` when the image is refused.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code when the command or its input is wrong (clap uses 2 for bad flags as well).
pub const EXIT_USAGE: u8 = 2;

/// Admits Kubernetes workloads only when their images carry cosign signatures that the cluster's
/// ImageSigningPolicies accept.
#[derive(Parser, Debug)]
#[command(name = "registryx-guard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the admission webhook (HTTPS) and its probes and metrics (plain HTTP).
    ///
    /// Policies come from the cluster's ImageSigningPolicy resources, or from YAML files with
    /// --policy-dir when there is no cluster (local runs, GitOps checks).
    Serve(ServeArgs),

    /// Decide whether one image is signed as the given policies demand, as the webhook would.
    ///
    /// Exit status: 0 admitted, 1 refused (with the reasons), 2 bad command or input.
    Verify(VerifyArgs),

    /// Print the ImageSigningPolicy CustomResourceDefinition generated from the Rust types.
    Crdgen(CrdgenArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Image references, e.g. `registry.example.com/team/app:1.4` or `...@sha256:<hex>`; several are
    /// verified at once.
    #[arg(env = "RXG_IMAGE", value_delimiter = ',')]
    pub images: Vec<String>,

    /// A Pod or workload manifest (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, a YAML
    /// file as `kubectl apply` takes it): every image of it is verified, and its pod metadata feeds Rego
    /// as in admission.
    #[arg(long, env = "RXG_RESOURCE")]
    pub resource: Option<PathBuf>,

    /// Decide as in this namespace: policies' namespaceSelectors apply, and Rego sees the namespace.
    #[arg(long, env = "RXG_NAMESPACE")]
    pub namespace: Option<String>,

    /// The labels of --namespace, `key=value` separated by commas.
    #[arg(
        long,
        env = "RXG_NAMESPACE_LABELS",
        value_delimiter = ',',
        requires = "namespace"
    )]
    pub namespace_labels: Vec<String>,

    /// Rego's `input.environment` when --namespace-labels name none, as `serve --environment` (and
    /// RegistryX's POLICY_ENVIRONMENT): `--environment prod` shows what RegistryX's default module
    /// decides in production.
    #[arg(long, env = "RXG_ENVIRONMENT")]
    pub environment: Option<String>,

    /// An ImageSigningPolicy YAML file (the same file `kubectl apply` takes); repeat for several.
    #[arg(
        long = "policy",
        env = "RXG_POLICY",
        value_delimiter = ',',
        required = true
    )]
    pub policies: Vec<PathBuf>,

    /// Output format.
    #[arg(long, env = "RXG_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// What to do with an image that no given policy governs, as `serve --unmatched` does.
    #[arg(long, env = "RXG_UNMATCHED", value_enum, default_value_t = Unmatched::Deny)]
    pub unmatched: Unmatched,

    /// Give up on the registry after this many seconds.
    #[arg(long, env = "RXG_TIMEOUT_SECONDS", default_value_t = 30)]
    pub timeout_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct CrdgenArgs {
    /// Write the CRD to this file instead of standard output.
    #[arg(long, env = "RXG_CRDGEN_OUTPUT")]
    pub output: Option<PathBuf>,
}

/// Runs the parsed command. Errors are the command's input errors (exit 2); refusals are exit codes.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crdgen(args) => crdgen(args),
        Command::Serve(args) => runtime()?
            .block_on(crate::server::serve(args))
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Verify(args) => verify(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn crdgen(args: CrdgenArgs) -> anyhow::Result<ExitCode> {
    let yaml = crate::policy::crd_yaml()?;
    match args.output {
        Some(path) => std::fs::write(&path, yaml)
            .map_err(|source| crate::Error::WriteFile { path, source })?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use crate::decide::{RequestContext, decide};
    use crate::policy::authority::NoSecrets;
    use crate::policy::{CompiledPolicy, compile, in_scope};
    use crate::registry::{DockerConfig, ImageRef};
    use crate::verify::{Verifier, VerifierSettings, render_text};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    // The input is checked in full first, so that a wrong file is reported as such (exit 2) whatever
    // the state of the registry.
    let mut written: Vec<String> = args.images.clone();
    let mut context = RequestContext::default();
    if let Some(path) = &args.resource {
        let (images, pod) = read_resource(path)?;
        written.extend(images);
        context.pod = Some(pod);
    }
    anyhow::ensure!(
        !written.is_empty(),
        "name at least one image, or a manifest with --resource"
    );
    let mut images: Vec<(String, ImageRef)> = Vec::new();
    for image in written {
        let parsed = ImageRef::parse(&image)?;
        if !images.iter().any(|(w, _)| *w == image) {
            images.push((image, parsed));
        }
    }
    let mut labels = BTreeMap::new();
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
    let mut policies: Vec<Arc<CompiledPolicy>> = Vec::new();
    for path in &args.policies {
        for policy in crate::policy::load_file(path)? {
            let name = policy.metadata.name.clone().unwrap_or_default();
            let compiled = compile(&policy, &NoSecrets, "registryx-guard")
                .with_context(|| format!("{}: policy {name:?} is not usable", path.display()))?;
            policies.push(Arc::new(compiled));
        }
    }
    anyhow::ensure!(
        !policies.is_empty(),
        "no ImageSigningPolicy found in {:?}",
        args.policies
    );
    // As in admission: with a namespace, only the policies whose namespaceSelector takes it.
    if args.namespace.is_some() {
        policies.retain(|p| in_scope(p.namespace_selector.as_ref(), &labels));
    }
    let credentials =
        DockerConfig::from_environment().map_err(|e| anyhow::anyhow!("Docker credentials: {e}"))?;

    let verifier = Verifier::new(VerifierSettings::default(), Some(credentials));
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(args.timeout_seconds.max(1));
    // Every image at once, through one verifier: its clients and caches are shared.
    let outcomes = runtime()?.block_on(futures::future::join_all(images.iter().map(
        |(written, image)| {
            let choice = crate::policy::choose_policies(policies.iter(), image);
            let governing: Vec<Arc<CompiledPolicy>> =
                choice.policies.into_iter().cloned().collect();
            let if_tag_names_digest: Option<Vec<Arc<CompiledPolicy>>> = choice
                .if_tag_names_digest
                .map(|tagged| tagged.into_iter().cloned().collect());
            let (verifier, context, args) = (&verifier, &context, &args);
            async move {
                if governing.is_empty() {
                    return unmatched(args, written, image);
                }
                let governing = crate::decide::settle_policies(
                    verifier,
                    image,
                    governing,
                    if_tag_names_digest,
                    deadline,
                )
                .await;
                let verdict = decide(verifier, image, &governing, context, deadline).await;
                let text = render_text(&verdict);
                let json = serde_json::to_value(&verdict).unwrap_or_default();
                (verdict.admitted(), text, json)
            }
        },
    )));
    let admitted = outcomes.iter().all(|(admitted, _, _)| *admitted);
    match args.output {
        OutputFormat::Text => {
            for (_, text, _) in &outcomes {
                print!("{text}");
            }
        }
        OutputFormat::Json => {
            let mut values: Vec<serde_json::Value> =
                outcomes.into_iter().map(|(_, _, json)| json).collect();
            let value = if values.len() == 1 {
                values.remove(0)
            } else {
                serde_json::Value::from(values)
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    Ok(ExitCode::from(if admitted {
        EXIT_ADMITTED
    } else {
        EXIT_REFUSED
    }))
}

/// The images of a Pod or workload manifest, and its pod (template) metadata for Rego.
fn read_resource(path: &std::path::Path) -> anyhow::Result<(Vec<String>, crate::rego::RegoPod)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let object: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a YAML or JSON manifest", path.display()))?;
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let images = crate::admission::images_of(&kind, &object)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let pod = crate::admission::pod_of(&kind, &object);
    Ok((images.into_iter().map(|i| i.image).collect(), pod))
}

/// The verdict on an image that no given policy governs: `--unmatched` decides, as in the webhook.
/// Returns (admitted, text, JSON).
fn unmatched(
    args: &VerifyArgs,
    written: &str,
    image: &crate::registry::ImageRef,
) -> (bool, String, serde_json::Value) {
    let admitted = args.unmatched != Unmatched::Deny;
    let reason = match args.unmatched {
        Unmatched::Deny => {
            "no policy governs this image, and only what a policy vouches for is admitted (--unmatched=deny)"
        }
        Unmatched::Warn => {
            "no policy governs this image: admitted with a warning (--unmatched=warn)"
        }
        Unmatched::Allow => {
            "no policy governs this image: admitted without looking it up (--unmatched=allow)"
        }
    };
    let result = if admitted { "admitted" } else { "refused" };
    let text = format!("image {written} (canonically {image})\n  {reason}\nresult: {result}\n");
    let json = serde_json::json!({
        "image": written, "canonical": image.to_string(), "digest": null,
        "policies": [], "admitted": admitted, "unmatched": args.unmatched, "reason": reason,
    });
    (admitted, text, json)
}
