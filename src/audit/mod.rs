//! The background audit: what already runs, re-checked against today's policies. Admission judges a pod
//! once; keys get revoked, images re-pushed, policies tightened, namespaces opt in after their pods
//! started. The Lease holder (the status writer, `controller`) re-checks the images of running pods
//! and of the templates of workloads that have no pod yet, and tells what it finds: each policy's
//! status (`violations`, the first offenders), a Warning Event on each offending pod, the metrics, and
//! the `AuditSink` (the PolicyReports' writer). It never evicts, patches or deletes anything.
//!
//! - [`inventory`]: what runs, from reflectors cut down to names, uids, owners and images.
//! - [`pass`]: one pass, each distinct (namespace, image) checked once, resumed (never restarted) when
//!   a change arrives mid-pass; [`check`]: admission's `ImageDecider` as the check; [`budget`]: the
//!   registry requests per second.
//! - [`findings`]: per pod, container and policy, and what that adds up to; [`events`]; [`metrics`].
//!
//! A pass runs when this replica becomes the Lease holder, when the policy snapshot changes (a policy,
//! a key, an identity), when a push event drops a repository's cached results (here or, through the
//! shared ConfigMap, on another replica), and every `interval`, which re-checks everything once.

pub mod budget;
pub mod check;
pub mod events;
pub mod findings;
pub mod inventory;
pub mod metrics;
pub mod pass;
pub mod reports;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::broadcast::error::TryRecvError;

pub use findings::{AuditResult, Findings};
pub use metrics::AuditMetrics;

use crate::admission::{ImageDecider, Unmatched};
use crate::controller::AuditLink;
use crate::policy::SharedSnapshot;
use crate::verify::{Invalidated, Verifier};

/// Which namespaces are audited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditNamespaces {
    /// Those the webhook governs: labelled `<opt-in label>=true` (the chart's `webhook.namespaces:
    /// optIn`).
    #[default]
    #[value(name = "optIn")]
    OptIn,
    /// Every namespace but the excluded ones: what enforcing would refuse before a team opts in.
    All,
}

#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Every this often, everything is checked again once.
    pub interval: Duration,
    /// Registry requests per second, at most, for cache misses.
    pub requests_per_second: f64,
    pub namespaces: AuditNamespaces,
    pub opt_in_label: String,
    /// The webhook's further namespaceSelector expressions (the chart's
    /// `webhook.namespaceSelectorExpressions`): a namespace they leave out is one the webhook never
    /// checks, so the audit must not report it either.
    pub namespace_selector: Option<kube::core::Selector>,
    /// Never audited (the webhook never checks them either).
    pub excluded_namespaces: Vec<String>,
    /// What an image no policy governs is (`--unmatched`): the audit judges as the webhook does.
    pub unmatched: Unmatched,
    pub environment: Option<String>,
    /// This replica's name, in its events.
    pub identity: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            interval: Duration::from_secs(300),
            requests_per_second: 20.0,
            namespaces: AuditNamespaces::OptIn,
            opt_in_label: "registryx.io/include".into(),
            namespace_selector: None,
            excluded_namespaces: vec!["kube-system".into()],
            unmatched: Unmatched::Deny,
            environment: None,
            identity: "registryx-guard".into(),
        }
    }
}

/// Whether `settings` audit `namespace`, whose labels `labels` reads (only when needed): what the
/// webhook's own namespaceSelector would let through, minus the excluded namespaces.
fn audited_by(
    settings: &AuditSettings,
    namespace: &str,
    labels: impl FnOnce() -> std::collections::BTreeMap<String, String>,
) -> bool {
    use kube::core::SelectorExt as _;
    if settings.excluded_namespaces.iter().any(|n| n == namespace) {
        return false;
    }
    if settings.namespaces == AuditNamespaces::All && settings.namespace_selector.is_none() {
        return true;
    }
    let labels = labels();
    let opted_in = match settings.namespaces {
        AuditNamespaces::All => true,
        AuditNamespaces::OptIn => {
            labels.get(&settings.opt_in_label).map(String::as_str) == Some("true")
        }
    };
    opted_in
        && settings
            .namespace_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(&labels))
}

/// Where each completed pass's results go besides status, events and metrics: the PolicyReports'
/// writer (`audit::reports`, wired by `server`). Every result, pass and fail, for every pod,
/// container and policy.
pub trait AuditSink: Send + Sync {
    fn publish<'a>(&'a self, results: &'a [AuditResult]) -> BoxFuture<'a, ()>;
}

/// The PolicyReports' writer as the audit's sink: each completed pass's results, as
/// `wgpolicyk8s.io` reports, where the cluster serves that API. Whether it does is asked again on each
/// pass until it does (a CRD installed after registryx-guard started is picked up), and a failure to
/// write is logged and retried on the next pass: reports are information, never a decision.
pub struct ReportsSink {
    client: kube::Client,
    writer: tokio::sync::Mutex<Option<reports::PolicyReports>>,
}

impl ReportsSink {
    pub fn new(client: kube::Client) -> ReportsSink {
        ReportsSink {
            client,
            writer: tokio::sync::Mutex::new(None),
        }
    }
}

impl AuditSink for ReportsSink {
    fn publish<'a>(&'a self, results: &'a [AuditResult]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut writer = self.writer.lock().await;
            if writer.is_none() {
                match reports::PolicyReports::discover(self.client.clone()).await {
                    Ok(found) => *writer = found,
                    Err(error) => {
                        tracing::warn!(%error, "cannot tell whether PolicyReports are served");
                        return;
                    }
                }
            }
            let Some(reports) = writer.as_ref() else {
                return;
            };
            let rows: Vec<reports::ReportResult> = results
                .iter()
                .map(|r| reports::ReportResult {
                    namespace: r.namespace.clone(),
                    pod: r.pod.clone(),
                    pod_uid: r.pod_uid.clone(),
                    kind: r.kind.to_owned(),
                    container: r.container.clone(),
                    image: r.image.clone(),
                    policy: r.policy.clone(),
                    rule: r.rule.clone(),
                    passed: r.passed,
                    // The reason's label first, as the metrics and status name it, then the
                    // refusal's own words with its remedy.
                    message: match (r.passed, r.reason) {
                        (true, _) => "verified".to_owned(),
                        (false, Some(reason)) => format!("{reason}: {}", r.message),
                        (false, None) => r.message.clone(),
                    },
                })
                .collect();
            match reports.publish(&rows).await {
                Ok(stats) => tracing::debug!(?stats, "PolicyReports published"),
                Err(error) => {
                    tracing::warn!(%error, "cannot write the PolicyReports; retrying next pass")
                }
            }
        })
    }
}

/// How long one image's check may take: a registry that hangs holds up the pass by this, at most.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the inventory's first lists may take before the pass counts as failed.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the policy snapshot is looked at for a change between passes.
const SNAPSHOT_POLL: Duration = Duration::from_millis(500);

/// What a pass completed with (for tests and logs).
#[derive(Clone, Copy, Debug, Default)]
pub struct PassSummary {
    pub subjects: usize,
    pub images: usize,
    pub checked: usize,
    pub requests: u64,
    pub elapsed: Duration,
}

/// The audit, ready to run.
pub struct Audit {
    client: kube::Client,
    snapshot: SharedSnapshot,
    verifier: Arc<Verifier>,
    namespaces: Store<Namespace>,
    link: AuditLink,
    settings: AuditSettings,
    metrics: AuditMetrics,
    sink: Option<Arc<dyn AuditSink>>,
}

impl Audit {
    pub fn new(
        client: kube::Client,
        snapshot: SharedSnapshot,
        verifier: Arc<Verifier>,
        namespaces: Store<Namespace>,
        link: AuditLink,
        settings: AuditSettings,
        metrics: AuditMetrics,
    ) -> Audit {
        Audit {
            client,
            snapshot,
            verifier,
            namespaces,
            link,
            settings,
            metrics,
            sink: None,
        }
    }

    /// Sends every completed pass's results to `sink` too.
    pub fn with_sink(mut self, sink: Arc<dyn AuditSink>) -> Audit {
        self.sink = Some(sink);
        self
    }

    fn audited(&self, namespace: &str) -> bool {
        let labels = || {
            self.namespaces
                .get(&ObjectRef::new(namespace))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default()
        };
        audited_by(&self.settings, namespace, labels)
    }

    /// Runs passes while this replica leads, until `shutdown`. The watches start with the first lead
    /// and stay: a replica that led once is likely to lead again.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut leading = self.link.leading();
        tokio::select! {
            led = leading.wait_for(|leading| *leading) => if led.is_err() { return },
            () = &mut shutdown => return,
        }
        self.start().run(shutdown).await;
    }

    /// Starts the watches and the pass state: an [`Auditor`], for [`Auditor::run`], or for a caller
    /// that runs and times passes itself.
    pub fn start(self) -> Auditor {
        let check = check::DeciderCheck {
            // Its own bulkhead: the audit's checks never take the webhook's slots of a slow registry.
            decider: ImageDecider::new(
                self.snapshot.clone(),
                self.verifier.clone(),
                self.settings.unmatched,
                4,
            ),
            snapshot: self.snapshot.clone(),
            verifier: self.verifier.clone(),
            namespaces: self.namespaces.clone(),
            environment: self.settings.environment.clone(),
            timeout: CHECK_TIMEOUT,
        };
        Auditor {
            check,
            state: pass::PassState::default(),
            budget: budget::Budget::new(self.settings.requests_per_second),
            events: events::PodEvents::new(self.client.clone(), &self.settings.identity),
            inventory: inventory::Inventory::start(&self.client),
            invalidations: self.verifier.invalidations(),
            audit: self,
        }
    }
}

/// A started audit: the watches, the pass state, the budget, the events told.
pub struct Auditor {
    audit: Audit,
    check: check::DeciderCheck,
    state: pass::PassState,
    budget: budget::Budget,
    events: events::PodEvents,
    inventory: inventory::Inventory,
    invalidations: tokio::sync::broadcast::Receiver<Invalidated>,
}

impl Auditor {
    /// Waits for the watches' first lists; false when they do not come within a minute (RBAC?).
    pub async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(INVENTORY_TIMEOUT, self.inventory.ready()).await,
            Ok(Ok(()))
        )
    }

    /// What a pass would check now (pods and pod-less workloads of the audited namespaces).
    pub fn subjects(&self) -> Vec<inventory::Subject> {
        let audit = &self.audit;
        self.inventory.subjects(|ns| audit.audited(ns))
    }

    /// Makes the next pass check everything once more (what the period does).
    pub fn new_round(&mut self) {
        self.state.new_round();
    }

    /// Passes while this replica leads, each after a trigger, until `shutdown`.
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut leading = self.audit.link.leading();
        let interval = self.audit.settings.interval;
        let mut next_round = tokio::time::Instant::now() + interval;
        loop {
            if !*leading.borrow_and_update() {
                self.audit.metrics.stepped_down();
                tokio::select! {
                    changed = leading.changed() => if changed.is_err() { return },
                    () = &mut shutdown => return,
                }
                continue;
            }
            let ready = tokio::select! {
                ready = self.ready() => ready,
                () = &mut shutdown => return,
            };
            if !ready {
                tracing::warn!("the audit cannot list pods and workloads (RBAC?); retrying");
                self.audit.metrics.failed();
                continue;
            }
            let revision = self.audit.snapshot.load().revision;
            let summary = self.pass().await;
            tracing::info!(
                subjects = summary.subjects,
                images = summary.images,
                checked = summary.checked,
                registry_requests = summary.requests,
                elapsed_ms = summary.elapsed.as_millis() as u64,
                "audit pass completed"
            );
            // Wait for a trigger.
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_round) => {
                        self.state.new_round();
                        next_round = tokio::time::Instant::now() + interval;
                        break;
                    }
                    received = self.invalidations.recv() => {
                        self.state.forget(&received.unwrap_or(Invalidated::All));
                        break;
                    }
                    () = tokio::time::sleep(SNAPSHOT_POLL) => {
                        if self.audit.snapshot.load().revision != revision {
                            break;
                        }
                    }
                    changed = leading.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                    () = &mut shutdown => return,
                }
            }
        }
    }

    /// One pass: check what is not current, then tell what was found.
    pub async fn pass(&mut self) -> PassSummary {
        let started = Instant::now();
        let audit = &self.audit;
        let subjects = self.inventory.subjects(|ns| audit.audited(ns));
        let keys: BTreeSet<pass::Key> = subjects
            .iter()
            .flat_map(|s| {
                s.images.iter().map(|(_, image)| pass::Key {
                    namespace: s.namespace.clone(),
                    image: image.clone(),
                })
            })
            .collect();
        let invalidations = &mut self.invalidations;
        let stats = self
            .state
            .run(&keys, &self.check, &mut self.budget, || {
                drain(invalidations)
            })
            .await;
        audit.metrics.registry_requests.inc_by(stats.requests);
        let findings = Findings::gather(&subjects, &self.state);
        audit.link.publish(findings.by_policy.clone());
        audit
            .metrics
            .completed(&findings, started.elapsed().as_secs_f64());
        self.events.publish(&findings).await;
        if let Some(sink) = &audit.sink {
            sink.publish(&findings.results).await;
        }
        PassSummary {
            subjects: subjects.len(),
            images: keys.len(),
            checked: stats.checked,
            requests: stats.requests,
            elapsed: started.elapsed(),
        }
    }
}

/// The sweeps that came since the last look (a receiver that lagged has missed some: all of them).
fn drain(invalidations: &mut tokio::sync::broadcast::Receiver<Invalidated>) -> Vec<Invalidated> {
    let mut drained = Vec::new();
    loop {
        match invalidations.try_recv() {
            Ok(invalidated) => drained.push(invalidated),
            Err(TryRecvError::Lagged(_)) => drained.push(Invalidated::All),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return drained,
        }
    }
}

#[cfg(test)]
mod namespace_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn selector(json: serde_json::Value) -> kube::core::Selector {
        let requirements: Vec<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement,
        > = serde_json::from_value(json).unwrap();
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_expressions: Some(requirements),
            match_labels: None,
        }
        .try_into()
        .unwrap()
    }

    #[test]
    fn the_audit_checks_only_what_the_webhooks_namespace_selector_lets_through() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mut settings = AuditSettings {
            namespace_selector: Some(selector(serde_json::json!([
                {"key": "tier", "operator": "NotIn", "values": ["sandbox"]}
            ]))),
            ..AuditSettings::default()
        };
        let opted = [("registryx.io/include", "true")];
        assert!(audited_by(&settings, "shop", || labels(&opted)));
        let sandbox = [("registryx.io/include", "true"), ("tier", "sandbox")];
        assert!(!audited_by(&settings, "play", || labels(&sandbox)));
        assert!(!audited_by(&settings, "other", || labels(&[])));
        assert!(!audited_by(&settings, "kube-system", || labels(&opted)));
        settings.namespaces = AuditNamespaces::All;
        assert!(audited_by(&settings, "other", || labels(&[])));
        assert!(!audited_by(&settings, "play", || labels(&sandbox)));
        settings.namespace_selector = None;
        assert!(audited_by(&settings, "play", || labels(&sandbox)));
    }
}
