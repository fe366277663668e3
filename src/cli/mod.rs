//! The command line: `serve`, `verify` and `crdgen`, parsed and dispatched. Every flag can also be set
//! from the environment (`RXG_*`), which is how the Helm chart configures the server. `verify` is its
//! own room (`verify`); `serve`'s flags live with the server (`server::ServeArgs`).

mod verify;

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
            .block_on(crate::server::serve(*args))
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Verify(args) => verify::run(args),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
