//! The flags of `serve`: what the server needs to start, parsed by clap in `cli` and read here, so that
//! the server depends on nothing above it.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Args;

use crate::admission::Unmatched;
use crate::audit::{AuditNamespaces, AuditSettings};
use crate::verify::VerifierSettings;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoints (/validate, /mutate).
    #[arg(long, env = "RXG_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP probes and metrics (/healthz, /readyz, /metrics).
    #[arg(long, env = "RXG_PROBES_LISTEN", default_value = "0.0.0.0:8080")]
    pub probes_listen: SocketAddr,

    /// PEM certificate chain served on --listen; reloaded when the file changes.
    #[arg(long, env = "RXG_TLS_CERT", default_value = "/tls/tls.crt")]
    pub tls_cert: PathBuf,

    /// PEM private key of --tls-cert; reloaded when the file changes.
    #[arg(long, env = "RXG_TLS_KEY", default_value = "/tls/tls.key")]
    pub tls_key: PathBuf,

    /// Load ImageSigningPolicy YAML files from this folder instead of watching the cluster.
    #[arg(long, env = "RXG_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,

    /// The namespace registryx-guard runs in: its Lease, and where policies' Secrets and ConfigMaps live.
    #[arg(long, env = "RXG_NAMESPACE", default_value = "registryx-guard")]
    pub namespace: String,

    /// This replica's name in the status-writer Lease (the chart passes the pod name).
    #[arg(long, env = "RXG_POD_NAME", default_value_t = default_identity())]
    pub identity: String,

    /// What to do with an image that no policy governs: deny (the default: only what a policy vouches
    /// for gets in), warn (admit with a warning) or allow, for a gradual roll-out.
    #[arg(long, env = "RXG_UNMATCHED", value_enum, default_value_t = Unmatched::Deny)]
    pub unmatched: Unmatched,

    /// Rego's `input.environment` for namespaces without an `environment` (or `env`) label, as
    /// RegistryX's POLICY_ENVIRONMENT (e.g. `prod` on a production cluster); without it, such a
    /// namespace's environment is its name.
    #[arg(long, env = "RXG_ENVIRONMENT")]
    pub environment: Option<String>,

    /// The shared token that RegistryX push events must carry (`Authorization: Bearer <token>`, or
    /// `?token=<token>` in RegistryX's WEBHOOK_URL); at least 16 characters. Without it, /registryx/events
    /// is off.
    #[arg(long, env = "RXG_EVENTS_TOKEN", hide_env_values = true)]
    pub events_token: Option<String>,

    /// The longest a verified result is used after its signatures were read, in seconds: how long a
    /// signature deleted from the registry can still admit on a replica that got no push event.
    #[arg(long, env = "RXG_VERIFIED_MAX_AGE_SECONDS", default_value_t = 30)]
    pub verified_max_age_seconds: u64,

    /// A verified result older than this many seconds is renewed in the background on its next use,
    /// so that a busy image never waits for the registry (0: never; it then expires and is read again).
    #[arg(long, env = "RXG_REVALIDATE_AFTER_SECONDS", default_value_t = 15)]
    pub revalidate_after_seconds: u64,

    /// How long a refusal is cached, in seconds: how soon an image signed without a push event is
    /// admitted.
    #[arg(long, env = "RXG_REFUSED_MAX_AGE_SECONDS", default_value_t = 30)]
    pub refused_max_age_seconds: u64,

    /// A ConfigMap of --namespace through which the replicas pass each other the push events that
    /// reach one of them (the chart creates `<release>-events`). Without it, or with --policy-dir, an
    /// event drops cached results only on the replica that receives it.
    #[arg(long, env = "RXG_EVENTS_CONFIGMAP")]
    pub events_configmap: Option<String>,

    /// Write what the audit finds as wgpolicyk8s.io/v1alpha2 PolicyReports (one per namespace) and a
    /// ClusterPolicyReport, when the cluster serves that API (`--policy-reports false`: never).
    #[arg(long, env = "RXG_POLICY_REPORTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub policy_reports: bool,

    /// On SIGTERM, report not ready and keep answering this many seconds before stopping, while the
    /// cluster takes the replica out of its Service (the chart's grace period is longer).
    #[arg(long, env = "RXG_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,

    /// Re-check what already runs against today's policies (the Lease holder does it; see the
    /// README's "Before you enforce"). Needs the cluster: off with --policy-dir.
    #[arg(long, env = "RXG_AUDIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit: bool,

    /// Every this many seconds, the audit checks every running image once more (besides policy
    /// changes and push events, which start a pass at once).
    #[arg(long, env = "RXG_AUDIT_INTERVAL_SECONDS", default_value_t = 300)]
    pub audit_interval_seconds: u64,

    /// The audit's registry budget: requests per second, at most, for images not in the cache.
    #[arg(long, env = "RXG_AUDIT_REQUESTS_PER_SECOND", default_value_t = 20.0)]
    pub audit_requests_per_second: f64,

    /// Which namespaces the audit checks: optIn (those the webhook governs, labelled
    /// --audit-opt-in-label=true) or all (every namespace but the excluded ones: what enforcing would
    /// refuse before a team opts in).
    #[arg(long, env = "RXG_AUDIT_NAMESPACES", value_enum, default_value_t = AuditNamespaces::OptIn)]
    pub audit_namespaces: AuditNamespaces,

    /// The namespace label that opts a namespace in (the chart's webhook.optInLabel).
    #[arg(
        long,
        env = "RXG_AUDIT_OPT_IN_LABEL",
        default_value = "registryx.io/include"
    )]
    pub audit_opt_in_label: String,

    /// The webhook's further namespaceSelector expressions, as JSON (a list of matchExpressions: the
    /// chart passes webhook.namespaceSelectorExpressions): a namespace they leave out is not audited.
    #[arg(long, env = "RXG_AUDIT_NAMESPACE_EXPRESSIONS", value_parser = parse_namespace_expressions)]
    pub audit_namespace_expressions: Option<kube::core::Selector>,

    /// Namespaces never audited, comma-separated (the chart passes its own and
    /// webhook.excludedNamespaces).
    #[arg(
        long,
        env = "RXG_AUDIT_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub audit_excluded_namespaces: Vec<String>,

    /// Tuning: open connections on --listen at once (default 1,024). Hidden: the tests lower it so
    /// that a crowd fills it with hundreds of sockets, not thousands.
    #[arg(long, env = "RXG_MAX_CONNECTIONS", default_value_t = super::MAX_CONNECTIONS, hide = true)]
    pub max_connections: usize,

    /// Tuning: open connections from one address at once (default 128). Hidden, as --max-connections.
    #[arg(long, env = "RXG_MAX_CONNECTIONS_PER_PEER", default_value_t = super::MAX_CONNECTIONS_PER_PEER, hide = true)]
    pub max_connections_per_peer: usize,
}

/// `[{"key","operator","values"}]` (Kubernetes' LabelSelectorRequirement list) as a selector; an empty
/// list selects every namespace.
fn parse_namespace_expressions(text: &str) -> Result<kube::core::Selector, String> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let requirements: Vec<LabelSelectorRequirement> = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON list of matchExpressions: {e}"))?;
    LabelSelector {
        match_expressions: Some(requirements),
        match_labels: None,
    }
    .try_into()
    .map_err(|e| format!("{e}"))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|_| "registryx-guard".into());
    format!("{}-{}", host.trim(), std::process::id())
}

impl ServeArgs {
    /// The audit's settings from the flags.
    pub fn audit_settings(&self) -> AuditSettings {
        AuditSettings {
            interval: Duration::from_secs(self.audit_interval_seconds.max(1)),
            requests_per_second: self.audit_requests_per_second,
            namespaces: self.audit_namespaces,
            opt_in_label: self.audit_opt_in_label.clone(),
            namespace_selector: self
                .audit_namespace_expressions
                .clone()
                .filter(|selector| !selector.selects_all()),
            excluded_namespaces: self.audit_excluded_namespaces.clone(),
            unmatched: self.unmatched,
            environment: self.environment.clone(),
            identity: self.identity.clone(),
        }
    }

    /// The cache lifetimes of the flags, checked: a renewal must come before the expiry it prevents.
    pub fn verifier_settings(&self) -> crate::Result<VerifierSettings> {
        let settings = VerifierSettings {
            verified_max_age: Duration::from_secs(self.verified_max_age_seconds),
            revalidate_after: Duration::from_secs(self.revalidate_after_seconds),
            refused_ttl: Duration::from_secs(self.refused_max_age_seconds),
            ..VerifierSettings::default()
        };
        if !settings.revalidate_after.is_zero()
            && settings.revalidate_after >= settings.verified_max_age
        {
            return Err(crate::Error::Config(format!(
                "--revalidate-after-seconds ({}) must be less than --verified-max-age-seconds ({}), \
                 or 0 to turn renewal off",
                self.revalidate_after_seconds, self.verified_max_age_seconds
            )));
        }
        Ok(settings)
    }
}
