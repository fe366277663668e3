//! The command line: `serve`, `verify` and `crdgen`, parsed and dispatched. Every flag can also be set
//! from the environment (`RXG_*`), which is how the Helm chart configures the server. `verify` is its
//! own room (`verify`); `serve`'s flags live with the server (`server::ServeArgs`).

mod cluster;
mod cosign_flags;
mod local_files;
mod public_good;
mod verify;

pub use cosign_flags::CosignFlags;

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
    // Boxed: its flags make it by far the largest variant.
    Serve(Box<ServeArgs>),

    /// Decide whether one image is signed as the given policies demand, as the webhook would.
    ///
    /// Exit status: 0 admitted, 1 refused (with the reasons), 2 bad command or input (a policy that
    /// is not usable is bad input: the images it governs are shown refused, as the webhook refuses them).
    Verify(Box<VerifyArgs>),

    /// Print the ImageSigningPolicy CustomResourceDefinition generated from the Rust types (or, with
    /// --policy-reports, the wgpolicyk8s.io PolicyReport CRDs).
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
    /// Optional when cosign's flags (--key, or --certificate-identity and --certificate-oidc-issuer)
    /// name the signer.
    #[arg(
        long = "policy",
        env = "RXG_POLICY",
        value_delimiter = ',',
        required_unless_present_any = ["key", "certificate_identity", "certificate_identity_regexp", "cluster"]
    )]
    pub policies: Vec<PathBuf>,

    /// Decide with the cluster of the current kube context (KUBECONFIG), read-only: its
    /// ImageSigningPolicies, the Secrets and ConfigMaps they name, and --namespace's labels; the
    /// answer is the webhook's, in its words, before `kubectl apply`.
    #[arg(long, env = "RXG_CLUSTER")]
    pub cluster: bool,

    /// With --cluster: the namespace registryx-guard runs in (where policies' Secrets live).
    #[arg(long, env = "RXG_CLUSTER_NAMESPACE", default_value = "registryx-guard")]
    pub cluster_namespace: String,

    #[command(flatten)]
    pub cosign: CosignFlags,

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

    /// Print the wgpolicyk8s.io/v1alpha2 PolicyReport and ClusterPolicyReport CRDs instead, for
    /// clusters where no other tool (Kyverno) installed them.
    #[arg(long, env = "RXG_CRDGEN_POLICY_REPORTS")]
    pub policy_reports: bool,
}

/// Runs the parsed command. Errors are the command's input errors (exit 2); refusals are exit codes.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crdgen(args) => crdgen(args),
        Command::Serve(args) => runtime()?
            .block_on(crate::server::serve(*args))
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Verify(args) => verify::run(*args),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn crdgen(args: CrdgenArgs) -> anyhow::Result<ExitCode> {
    let yaml = if args.policy_reports {
        crate::audit::reports::crds_yaml()?
    } else {
        crate::policy::crd_yaml()?
    };
    match args.output {
        Some(path) => std::fs::write(&path, yaml)
            .map_err(|source| crate::Error::WriteFile { path, source })?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}
