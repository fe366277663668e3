//! What the audit found, written where platform tools look: `wgpolicyk8s.io/v1alpha2` PolicyReports
//! (one per namespace, named `registryx-guard`) and one ClusterPolicyReport for results that belong to
//! no namespace, as Kyverno writes them, so that Policy Reporter, Kyverno's UI and `kubectl get polr -A`
//! show them.
//!
//! The API is not ours: the CRD is usually Kyverno's. So the types below follow the upstream schema
//! field for field (and `crdgen --policy-reports` prints a CRD for clusters without one), nothing is
//! written unless the API is served ([`PolicyReports::discover`]), and only objects labelled
//! `app.kubernetes.io/managed-by: registryx-guard` are ever changed or deleted.
//!
//! A pass publishes everything it found ([`PolicyReports::publish`]); the API server is written only
//! where a report's content changed. Each report carries the SHA-256 of its content (timestamps aside)
//! in an annotation, and one metadata list per kind tells which reports are current, which are ours and
//! must go, so an unchanged cluster costs two list requests per pass whoever wrote last (another
//! replica, an earlier process). A result keeps the timestamp of the pass that first found it as it is.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, CustomResource, CustomResourceExt as _, Resource as _};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The name of every report registryx-guard writes (one per namespace, and the cluster's).
pub const REPORT_NAME: &str = "registryx-guard";
/// The field manager of the server-side applies, and each result's `source`.
pub const FIELD_MANAGER: &str = "registryx-guard";
/// The label that makes a report ours: reports without it are never changed or deleted.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The SHA-256 of the report's content without its timestamps: equal means nothing to write.
pub const DIGEST_ANNOTATION: &str = "registryx.io/report-digest";
/// How many results the report leaves out because of the caps (absent when none).
pub const OMITTED_ANNOTATION: &str = "registryx.io/results-omitted";
/// At most this many results in one report: failing results first, then passing ones.
pub const MAX_RESULTS: usize = 1_000;
/// At most this many bytes of results (as JSON) in one report, well under the ~1.5 MiB the API server
/// (etcd) takes for one object, whatever the messages and image names are.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// A message longer than this many characters is cut (a Rego module's own text can be anything).
pub const MAX_MESSAGE_CHARS: usize = 1_024;
/// The API whose presence turns reports on.
const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// Reports written at once: a first pass over many namespaces should not take one round trip each
/// in turn, nor flood the API server.
const WRITE_CONCURRENCY: usize = 8;

/// One check of one container of one pod against one policy: what the audit hands in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportResult {
    /// The pod's namespace; `None` goes to the ClusterPolicyReport.
    pub namespace: Option<String>,
    pub pod: String,
    pub pod_uid: String,
    /// `Pod`, or the kind of a workload whose template was checked because it has no pod yet
    /// (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob).
    pub kind: String,
    pub container: String,
    pub image: String,
    /// The ImageSigningPolicy's name.
    pub policy: String,
    /// The authority or the Rego rule that decided.
    pub rule: String,
    pub passed: bool,
    /// The refusal's reason and remedy, or "verified".
    pub message: String,
}

/// What one [`PolicyReports::publish`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Reports created or changed (server-side applies).
    pub written: usize,
    /// Reports whose content was already what the pass found: not written.
    pub unchanged: usize,
    /// Reports of ours deleted because their namespace has no results any more.
    pub deleted: usize,
    /// Reports that could not be written or deleted (logged; the next pass tries again).
    pub failed: usize,
    /// Namespaces where a report of another tool already has our name: left alone (logged).
    pub foreign: usize,
    /// Reports that hold fewer results than were found ([`MAX_RESULTS`], [`MAX_RESULT_BYTES`]).
    pub capped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot tell whether the cluster serves {API_VERSION}: {0}")]
    Discovery(#[source] kube::Error),

    #[error("cannot {action} {what}: {source}")]
    Kube {
        action: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot serialize {what}: {reason}")]
    Serialize { what: &'static str, reason: String },
}

// ---------------------------------------------------------------------------------------------------
// The wgpolicyk8s.io/v1alpha2 types, as upstream (kubernetes-sigs/wg-policy-prototypes) defines them.

/// The count of results by outcome.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyReportSummary {
    /// Results whose policy requirements were met.
    #[serde(default)]
    pub pass: i64,
    /// Results whose policy requirements were not met.
    #[serde(default)]
    pub fail: i64,
    /// Results of non-scored policies whose requirements were not met.
    #[serde(default)]
    pub warn: i64,
    /// Results of policies that could not be evaluated.
    #[serde(default)]
    pub error: i64,
    /// Results of policies that were not selected for evaluation.
    #[serde(default)]
    pub skip: i64,
}

/// The outcome of one result.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyResult {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

/// How critical a result is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyResultSeverity {
    Critical,
    High,
    Low,
    Medium,
    Info,
}

/// A protobuf-style timestamp, as upstream's `metav1.Timestamp`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportTimestamp {
    /// Seconds of UTC time since the Unix epoch.
    pub seconds: i64,
    /// Non-negative fractions of a second at nanosecond resolution (0 to 999,999,999).
    pub nanos: i32,
}

/// The result of one policy rule for the resources it names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReportResult {
    /// The policy engine that manages this report.
    #[serde(default)]
    pub source: String,
    /// The name of the policy.
    pub policy: String,
    /// The rule within the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub rule: Option<String>,
    /// The policy's category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub category: Option<String>,
    /// How critical the result is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PolicyResultSeverity")]
    pub severity: Option<PolicyResultSeverity>,
    /// When the result was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ReportTimestamp")]
    pub timestamp: Option<ReportTimestamp>,
    /// The outcome of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PolicyResult")]
    pub result: Option<PolicyResult>,
    /// Whether this result is scored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scored: bool,
    /// The checked Kubernetes resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ObjectReference>,
    /// The checked resources as a label selector, instead of `resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "LabelSelector")]
    pub resource_selector: Option<LabelSelector>,
    /// A short message for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub message: Option<String>,
    /// Further information on the result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The two kinds share their fields (upstream's Go types are two copies too); the derive wants one
/// struct per kind, so a macro writes both from one list.
macro_rules! report_kind {
    ($root:ident, $fields:ident, $kind:tt, $plural:tt, $short:tt, $doc:tt $(, $namespaced:ident)?) => {
        #[doc = $doc]
        #[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
        #[kube(
            group = "wgpolicyk8s.io",
            doc = $doc,
            version = "v1alpha2",
            kind = $kind,
            plural = $plural,
            shortname = $short,
            no_spec,
            $($namespaced,)?
            printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".scope.kind","priority":1}"#,
            printcolumn = r#"{"name":"Name","type":"string","jsonPath":".scope.name","priority":1}"#,
            printcolumn = r#"{"name":"Pass","type":"integer","jsonPath":".summary.pass"}"#,
            printcolumn = r#"{"name":"Fail","type":"integer","jsonPath":".summary.fail"}"#,
            printcolumn = r#"{"name":"Warn","type":"integer","jsonPath":".summary.warn"}"#,
            printcolumn = r#"{"name":"Error","type":"integer","jsonPath":".summary.error"}"#,
            printcolumn = r#"{"name":"Skip","type":"integer","jsonPath":".summary.skip"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $fields {
            /// What the report is about (a Deployment, a Namespace, a Node); absent for a whole
            /// namespace.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "ObjectReference")]
            pub scope: Option<ObjectReference>,
            /// Several scopes (e.g. Pods) as a selector; not together with `scope`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "LabelSelector")]
            pub scope_selector: Option<LabelSelector>,
            /// The count of results by outcome.
            #[serde(default)]
            pub summary: PolicyReportSummary,
            /// The results.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub results: Vec<PolicyReportResult>,
        }

        impl Report for $root {
            fn assemble(metadata: ObjectMeta, summary: PolicyReportSummary, results: Vec<PolicyReportResult>) -> Self {
                let mut report = Self::new("", $fields { scope: None, scope_selector: None, summary, results });
                report.metadata = metadata;
                report
            }

            fn results(&self) -> &[PolicyReportResult] {
                &self.spec.results
            }
        }
    };
}

/// What the writer needs of either kind.
trait Report:
    kube::Resource<DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn assemble(
        metadata: ObjectMeta,
        summary: PolicyReportSummary,
        results: Vec<PolicyReportResult>,
    ) -> Self;
    fn results(&self) -> &[PolicyReportResult];
}

report_kind!(
    PolicyReport,
    PolicyReportFields,
    "PolicyReport",
    "policyreports",
    "polr",
    "PolicyReport holds the results of policies for the resources of one namespace.",
    namespaced
);
report_kind!(
    ClusterPolicyReport,
    ClusterPolicyReportFields,
    "ClusterPolicyReport",
    "clusterpolicyreports",
    "cpolr",
    "ClusterPolicyReport holds the results of policies for resources that belong to no namespace."
);

/// The PolicyReport and ClusterPolicyReport CRDs (`crdgen --policy-reports`), for clusters where no
/// other tool (Kyverno) installed them.
pub fn crds_yaml() -> Result<String, ReportError> {
    let mut yaml = String::new();
    for mut crd in [PolicyReport::crd(), ClusterPolicyReport::crd()] {
        // `helm uninstall` must not delete the CRD: that would delete every report in the cluster,
        // those of other tools that came to rely on it included.
        crd.metadata.annotations = Some(BTreeMap::from([(
            "helm.sh/resource-policy".to_owned(),
            "keep".to_owned(),
        )]));
        yaml.push_str("---\n");
        yaml.push_str(
            &serde_yaml::to_string(&crd).map_err(|error| ReportError::Serialize {
                what: "the PolicyReport CRDs",
                reason: error.to_string(),
            })?,
        );
    }
    Ok(yaml)
}

// ---------------------------------------------------------------------------------------------------
// One report's content, from what a pass found.

/// The identity of one result (its JSON without the timestamp, hashed): the key under which its
/// timestamp is kept from pass to pass.
type ResultKey = [u8; 32];

/// One report's content, timestamps aside: what is compared from pass to pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportContent {
    /// The counts of every result found, those the caps left out included.
    pub summary: PolicyReportSummary,
    /// The results the report holds, failing first, without timestamps.
    pub results: Vec<PolicyReportResult>,
    /// How many results were found but left out ([`MAX_RESULTS`], [`MAX_RESULT_BYTES`]).
    pub omitted: usize,
    /// SHA-256 (hex) of the summary, the omitted count and the results.
    pub digest: String,
    keys: Vec<ResultKey>,
}

/// The content of one report from the results of its namespace (in any order, duplicates allowed):
/// sorted so that equal findings give an equal report, failing results first, capped.
pub fn report_content(found: &[&ReportResult]) -> ReportContent {
    let mut found = found.to_vec();
    found.sort_by(|a, b| {
        (
            a.passed,
            &a.pod,
            &a.pod_uid,
            &a.container,
            &a.policy,
            &a.rule,
            &a.image,
            &a.message,
        )
            .cmp(&(
                b.passed,
                &b.pod,
                &b.pod_uid,
                &b.container,
                &b.policy,
                &b.rule,
                &b.image,
                &b.message,
            ))
    });
    found.dedup();

    let mut summary = PolicyReportSummary::default();
    let (mut results, mut keys, mut bytes, mut capped) = (Vec::new(), Vec::new(), 0usize, false);
    for one in &found {
        if one.passed {
            summary.pass += 1;
        } else {
            summary.fail += 1;
        }
        if capped || results.len() == MAX_RESULTS {
            continue; // still counted in the summary
        }
        let result = to_result(one);
        let json = result_json(&result);
        if bytes + json.len() > MAX_RESULT_BYTES {
            // Full. A smaller result further on might fit, but it would be a passing one in place of
            // a failing one left out: the report stops here, and the count says what is left out.
            capped = true;
            continue;
        }
        bytes += json.len();
        keys.push(Sha256::digest(&json).into());
        results.push(result);
    }
    let omitted = found.len() - results.len();

    let mut digest = Sha256::new();
    for count in [
        summary.pass,
        summary.fail,
        summary.warn,
        summary.error,
        summary.skip,
    ] {
        digest.update(count.to_be_bytes());
    }
    digest.update((omitted as u64).to_be_bytes());
    for key in &keys {
        digest.update(key);
    }
    ReportContent {
        summary,
        results,
        omitted,
        digest: hex::encode(digest.finalize()),
        keys,
    }
}

/// Serialization of these types cannot fail (string keys only); an empty buffer would only make the
/// result count as small and unchanged, never panic.
fn result_json(result: &PolicyReportResult) -> Vec<u8> {
    serde_json::to_vec(result).unwrap_or_default()
}

fn result_key(result: &PolicyReportResult) -> ResultKey {
    let unstamped = PolicyReportResult {
        timestamp: None,
        ..result.clone()
    };
    Sha256::digest(result_json(&unstamped)).into()
}

/// The API version of the kinds the audit reports on.
fn api_version_of(kind: &str) -> &'static str {
    match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    }
}

fn to_result(found: &ReportResult) -> PolicyReportResult {
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let message = if found.message.chars().count() > MAX_MESSAGE_CHARS {
        let mut cut: String = found.message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        found.message.clone()
    };
    PolicyReportResult {
        source: FIELD_MANAGER.to_owned(),
        policy: found.policy.clone(),
        rule: non_empty(&found.rule),
        category: Some("Image signatures".to_owned()),
        severity: None,
        timestamp: None,
        result: Some(if found.passed {
            PolicyResult::Pass
        } else {
            PolicyResult::Fail
        }),
        scored: true,
        resources: vec![ObjectReference {
            api_version: Some(api_version_of(&found.kind).to_owned()),
            kind: Some(found.kind.clone()),
            name: Some(found.pod.clone()),
            namespace: found.namespace.clone(),
            uid: non_empty(&found.pod_uid),
            ..ObjectReference::default()
        }],
        resource_selector: None,
        message: Some(message),
        properties: BTreeMap::from([
            ("container".to_owned(), found.container.clone()),
            ("image".to_owned(), found.image.clone()),
        ]),
    }
}

/// The results of `content` with timestamps: a result already in the previous report keeps its
/// time, a new or changed one gets `now`.
fn stamped(
    content: &ReportContent,
    previous: &HashMap<ResultKey, ReportTimestamp>,
    now: ReportTimestamp,
) -> (Vec<PolicyReportResult>, HashMap<ResultKey, ReportTimestamp>) {
    let mut stamps = HashMap::with_capacity(content.keys.len());
    let results = content
        .results
        .iter()
        .zip(&content.keys)
        .map(|(result, key)| {
            let time = previous.get(key).copied().unwrap_or(now);
            stamps.insert(*key, time);
            PolicyReportResult {
                timestamp: Some(time),
                ..result.clone()
            }
        })
        .collect();
    (results, stamps)
}

fn report_metadata(namespace: Option<&str>, content: &ReportContent) -> ObjectMeta {
    let mut annotations = BTreeMap::from([(DIGEST_ANNOTATION.to_owned(), content.digest.clone())]);
    if content.omitted > 0 {
        annotations.insert(OMITTED_ANNOTATION.to_owned(), content.omitted.to_string());
    }
    ObjectMeta {
        name: Some(REPORT_NAME.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            FIELD_MANAGER.to_owned(),
        )])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

// ---------------------------------------------------------------------------------------------------
// The writer.

/// Which report: a namespace's, or (`None`) the cluster's.
type ReportKey = Option<String>;

enum Outcome {
    Written,
    Deleted,
    Foreign,
    Failed,
}

/// Writes the audit's results as PolicyReports; made by [`PolicyReports::discover`] when the cluster
/// serves them.
pub struct PolicyReports {
    client: kube::Client,
    /// The timestamps of the results last written, per report: kept for the results that stay.
    stamps: Mutex<HashMap<ReportKey, HashMap<ResultKey, ReportTimestamp>>>,
}

impl PolicyReports {
    /// None when the wgpolicyk8s.io/v1alpha2 PolicyReport CRD is not served (then nothing is written).
    /// Discovery is open to every authenticated user (the `system:discovery` role): no RBAC rule is
    /// needed for it.
    pub async fn discover(client: kube::Client) -> Result<Option<PolicyReports>, ReportError> {
        let resources = match client.list_api_group_resources(API_VERSION).await {
            Ok(list) => list.resources,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
            Err(error) => return Err(ReportError::Discovery(error)),
        };
        let served = |plural: &str| resources.iter().any(|r| r.name == plural);
        if !(served(&PolicyReport::plural(&())) && served(&ClusterPolicyReport::plural(&()))) {
            return Ok(None);
        }
        Ok(Some(PolicyReports {
            client,
            stamps: Mutex::default(),
        }))
    }

    /// Makes the reports say exactly `results` (one full pass): a report per namespace with results,
    /// the ClusterPolicyReport for those without a namespace, each written only when its content
    /// changed, and ours deleted where no result is left. A report that cannot be written is logged
    /// and counted (`failed`), and the others are still written; only a failure to list our reports
    /// is an error.
    pub async fn publish(&self, results: &[ReportResult]) -> Result<PublishStats, ReportError> {
        let mut found: BTreeMap<ReportKey, Vec<&ReportResult>> = BTreeMap::new();
        for result in results {
            found
                .entry(result.namespace.clone())
                .or_default()
                .push(result);
        }

        // Ours, with the digest of what each says now: one metadata list per kind.
        let ours = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
        let mut existing: HashMap<ReportKey, Option<String>> = HashMap::new();
        let namespaced = Api::<PolicyReport>::all(self.client.clone())
            .list_metadata(&ours)
            .await
            .map_err(|source| ReportError::Kube {
                action: "list",
                what: "the PolicyReports of registryx-guard".to_owned(),
                source,
            })?;
        let cluster = Api::<ClusterPolicyReport>::all(self.client.clone())
            .list_metadata(&ours)
            .await
            .map_err(|source| ReportError::Kube {
                action: "list",
                what: "the ClusterPolicyReports of registryx-guard".to_owned(),
                source,
            })?;
        let metas = namespaced
            .items
            .iter()
            .map(|report| report.meta())
            .chain(cluster.items.iter().map(|report| report.meta()));
        for meta in metas {
            // Another name with our label is not a report this writer made: left alone.
            if meta.name.as_deref() != Some(REPORT_NAME) {
                continue;
            }
            let digest = meta
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(DIGEST_ANNOTATION).cloned());
            existing.insert(meta.namespace.clone(), digest);
        }

        let now = k8s_openapi::jiff::Timestamp::now();
        let now = ReportTimestamp {
            seconds: now.as_second(),
            nanos: now.subsec_nanosecond(),
        };
        let mut stats = PublishStats::default();
        let mut jobs = Vec::new();
        for (key, found) in found {
            let content = report_content(&found);
            if content.omitted > 0 {
                stats.capped += 1;
            }
            match existing.remove(&key) {
                Some(Some(digest)) if digest == content.digest => stats.unchanged += 1,
                previous => jobs.push(Job::Write {
                    key,
                    content,
                    exists: previous.is_some(),
                }),
            }
        }
        jobs.extend(existing.into_keys().map(Job::Delete));

        let outcomes: Vec<Outcome> = futures::stream::iter(jobs)
            .map(|job| self.run(job, now))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Outcome::Written => stats.written += 1,
                Outcome::Deleted => stats.deleted += 1,
                Outcome::Foreign => stats.foreign += 1,
                Outcome::Failed => stats.failed += 1,
            }
        }
        Ok(stats)
    }

    async fn run(&self, job: Job, now: ReportTimestamp) -> Outcome {
        match job {
            Job::Write {
                key: Some(namespace),
                content,
                exists,
            } => {
                let api = Api::<PolicyReport>::namespaced(self.client.clone(), &namespace);
                self.write(api, Some(namespace), content, exists, now).await
            }
            Job::Write {
                key: None,
                content,
                exists,
            } => {
                let api = Api::<ClusterPolicyReport>::all(self.client.clone());
                self.write(api, None, content, exists, now).await
            }
            Job::Delete(Some(namespace)) => {
                let api = Api::<PolicyReport>::namespaced(self.client.clone(), &namespace);
                self.delete(api, Some(namespace)).await
            }
            Job::Delete(None) => {
                let api = Api::<ClusterPolicyReport>::all(self.client.clone());
                self.delete(api, None).await
            }
        }
    }

    async fn write<K: Report>(
        &self,
        api: Api<K>,
        key: ReportKey,
        content: ReportContent,
        exists: bool,
        now: ReportTimestamp,
    ) -> Outcome {
        let what = describe(&key);
        if !exists {
            // Our name may be taken by another tool's report, which a forced apply would take over.
            match api.get_metadata_opt(REPORT_NAME).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    tracing::warn!(report = %what, "a report not labelled as registryx-guard's has its name: left alone, nothing written");
                    return Outcome::Foreign;
                }
                Err(error) => {
                    tracing::warn!(report = %what, %error, "cannot read the report");
                    return Outcome::Failed;
                }
            }
        }
        let previous = self.remembered(&key);
        let previous = match previous {
            Some(previous) => previous,
            // Written by another replica or an earlier process: its timestamps are on the server.
            None if exists => match api.get_opt(REPORT_NAME).await {
                Ok(Some(report)) => report
                    .results()
                    .iter()
                    .filter_map(|result| Some((result_key(result), result.timestamp?)))
                    .collect(),
                _ => HashMap::new(),
            },
            None => HashMap::new(),
        };
        let (results, stamps) = stamped(&content, &previous, now);
        let report = K::assemble(
            report_metadata(key.as_deref(), &content),
            content.summary,
            results,
        );
        let applied = api
            .patch(
                REPORT_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&report),
            )
            .await;
        match applied {
            Ok(_) => {
                tracing::debug!(report = %what, results = content.results.len(), omitted = content.omitted, "report written");
                self.stamps_mut().insert(key, stamps);
                Outcome::Written
            }
            Err(error) => {
                tracing::warn!(report = %what, %error, "cannot write the report");
                Outcome::Failed
            }
        }
    }

    async fn delete<K: Report>(&self, api: Api<K>, key: ReportKey) -> Outcome {
        let what = describe(&key);
        match api.delete(REPORT_NAME, &DeleteParams::default()).await {
            Ok(_) => {}
            // Gone already (another replica, its namespace deleted): what this pass wanted.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(report = %what, %error, "cannot delete the report");
                return Outcome::Failed;
            }
        }
        self.stamps_mut().remove(&key);
        Outcome::Deleted
    }

    fn remembered(&self, key: &ReportKey) -> Option<HashMap<ResultKey, ReportTimestamp>> {
        self.stamps_mut().get(key).cloned()
    }

    /// The lock only guards map operations that cannot panic; a poisoned lock still holds a usable map.
    fn stamps_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ReportKey, HashMap<ResultKey, ReportTimestamp>>> {
        self.stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Job {
    Write {
        key: ReportKey,
        content: ReportContent,
        exists: bool,
    },
    Delete(ReportKey),
}

fn describe(key: &ReportKey) -> String {
    match key {
        Some(namespace) => format!("PolicyReport {namespace}/{REPORT_NAME}"),
        None => format!("ClusterPolicyReport {REPORT_NAME}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(namespace: &str, pod: &str, policy: &str, passed: bool) -> ReportResult {
        ReportResult {
            namespace: Some(namespace.to_owned()),
            pod: pod.to_owned(),
            pod_uid: format!("uid-{pod}"),
            kind: "Pod".to_owned(),
            container: "app".to_owned(),
            image: format!("registry.example/team/{pod}:1"),
            policy: policy.to_owned(),
            rule: "release-key".to_owned(),
            passed,
            message: if passed {
                "verified".to_owned()
            } else {
                "no_signature: sign it with cosign sign --key ...".to_owned()
            },
        }
    }

    fn failing_then_passing(failing: usize, passing: usize) -> Vec<ReportResult> {
        let failing = (0..failing).map(|i| found("team", &format!("bad-{i:05}"), "signed", false));
        let passing = (0..passing).map(|i| found("team", &format!("good-{i:05}"), "signed", true));
        // Passing first, so that the cap's order comes from the content and not the input.
        passing.chain(failing).collect()
    }

    #[test]
    fn the_summary_counts_every_result_once_and_the_order_does_not_depend_on_the_input() {
        let results = [
            found("team", "b", "signed", true),
            found("team", "a", "signed", false),
            found("team", "a", "rego", true),
            found("team", "a", "signed", false), // the same finding twice: one result
        ];
        let forward: Vec<&ReportResult> = results.iter().collect();
        let backward: Vec<&ReportResult> = results.iter().rev().collect();
        let content = report_content(&forward);
        assert_eq!(
            content.summary,
            PolicyReportSummary {
                pass: 2,
                fail: 1,
                ..PolicyReportSummary::default()
            }
        );
        assert_eq!(content.omitted, 0);
        assert_eq!(
            content,
            report_content(&backward),
            "order changed the report"
        );
        let order: Vec<(Option<PolicyResult>, &str, &str)> = content
            .results
            .iter()
            .map(|r| {
                (
                    r.result,
                    r.resources[0].name.as_deref().unwrap(),
                    r.policy.as_str(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (Some(PolicyResult::Fail), "a", "signed"),
                (Some(PolicyResult::Pass), "a", "rego"),
                (Some(PolicyResult::Pass), "b", "signed"),
            ]
        );
        let first = &content.results[0];
        assert_eq!(first.source, "registryx-guard");
        assert_eq!(first.rule.as_deref(), Some("release-key"));
        assert_eq!(first.properties["container"], "app");
        assert_eq!(first.properties["image"], "registry.example/team/a:1");
        assert_eq!(first.resources[0].kind.as_deref(), Some("Pod"));
        assert_eq!(first.resources[0].uid.as_deref(), Some("uid-a"));
        assert_eq!(first.resources[0].namespace.as_deref(), Some("team"));
    }

    #[test]
    fn a_huge_namespace_keeps_failing_results_first_up_to_the_cap_and_counts_all() {
        let results = failing_then_passing(300, 2_000);
        let content = report_content(&results.iter().collect::<Vec<_>>());
        assert_eq!(content.results.len(), MAX_RESULTS);
        assert_eq!(content.omitted, 2_300 - MAX_RESULTS);
        assert_eq!((content.summary.fail, content.summary.pass), (300, 2_000));
        let failing = content
            .results
            .iter()
            .take_while(|r| r.result == Some(PolicyResult::Fail))
            .count();
        assert_eq!(
            failing, 300,
            "every failing result comes before any passing one"
        );

        let results = failing_then_passing(1_500, 10);
        let content = report_content(&results.iter().collect::<Vec<_>>());
        assert_eq!(content.results.len(), MAX_RESULTS);
        assert!(
            content
                .results
                .iter()
                .all(|r| r.result == Some(PolicyResult::Fail)),
            "a passing result took the place of a failing one"
        );
        let metadata = report_metadata(Some("team"), &content);
        assert_eq!(
            metadata.annotations.unwrap()[OMITTED_ANNOTATION],
            (1_510 - MAX_RESULTS).to_string()
        );
    }

    #[test]
    fn long_messages_are_cut_and_the_results_stay_under_the_byte_budget() {
        let mut results: Vec<ReportResult> = (0..MAX_RESULTS)
            .map(|i| ReportResult {
                image: format!("registry.example/{}:{i}", "deep/".repeat(400)),
                message: "x".repeat(50_000),
                ..found("team", &format!("pod-{i:05}"), "signed", false)
            })
            .collect();
        // Small passing results after the failing ones: they must not fill the room that is left.
        results.extend(failing_then_passing(0, 50));
        let content = report_content(&results.iter().collect::<Vec<_>>());
        assert!(
            content.omitted > 0,
            "2 KiB images x 1,000 must hit the budget"
        );
        assert!(
            content
                .results
                .iter()
                .all(|r| r.result == Some(PolicyResult::Fail)),
            "a passing result took the place of a failing one"
        );
        assert_eq!(content.summary.pass, 50);
        assert_eq!(content.results.len() + content.omitted, MAX_RESULTS + 50);
        assert_eq!(content.summary.fail as usize, MAX_RESULTS);
        let message = content.results[0].message.as_deref().unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(message.ends_with('…'));
        let report = PolicyReport::assemble(
            report_metadata(Some("team"), &content),
            content.summary,
            content.results.clone(),
        );
        let bytes = serde_json::to_vec(&report).unwrap().len();
        assert!(
            bytes < MAX_RESULT_BYTES + 4096,
            "the report is {bytes} bytes"
        );
    }

    #[test]
    fn the_digest_follows_the_content_and_timestamps_stay_while_a_result_does() {
        let before = [
            found("team", "a", "signed", false),
            found("team", "b", "signed", true),
        ];
        let after = [
            found("team", "a", "signed", false),
            ReportResult {
                message: "other_signer: sign with the authority's key".to_owned(),
                ..found("team", "b", "signed", false)
            },
        ];
        let before = report_content(&before.iter().collect::<Vec<_>>());
        let after = report_content(&after.iter().collect::<Vec<_>>());
        assert_ne!(before.digest, after.digest);

        let then = ReportTimestamp {
            seconds: 100,
            nanos: 5,
        };
        let now = ReportTimestamp {
            seconds: 200,
            nanos: 0,
        };
        let (first, stamps) = stamped(&before, &HashMap::new(), then);
        assert!(first.iter().all(|r| r.timestamp == Some(then)));
        let (second, _) = stamped(&after, &stamps, now);
        let times: Vec<(&str, ReportTimestamp)> = second
            .iter()
            .map(|r| {
                (
                    r.resources[0].name.as_deref().unwrap(),
                    r.timestamp.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            times,
            [("a", then), ("b", now)],
            "a kept its time, b changed"
        );
        // The key of a result read back from the server, timestamp and all, is the key it was written
        // under.
        assert_eq!(result_key(&second[0]), after.keys[0]);
    }

    #[test]
    fn a_report_has_the_upstream_shape_at_its_root() {
        let results = [found("team", "a", "signed", false)];
        let content = report_content(&results.iter().collect::<Vec<_>>());
        let report = PolicyReport::assemble(
            report_metadata(Some("team"), &content),
            content.summary,
            content.results,
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(json["kind"], "PolicyReport");
        assert!(
            json.get("spec").is_none(),
            "fields belong at the root: {json}"
        );
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["results"][0]["result"], "fail");
        assert_eq!(json["results"][0]["resources"][0]["apiVersion"], "v1");
        assert_eq!(
            json["metadata"]["labels"][MANAGED_BY_LABEL],
            "registryx-guard"
        );
        let back: PolicyReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.spec.results.len(), 1);
    }
}
