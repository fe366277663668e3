//! The audit's PolicyReports against a real kube-apiserver, written as the chart's ServiceAccount (its
//! RBAC, no more) into the CRDs `crdgen --policy-reports` generates (as crds/ holds them, and as the
//! chart installs them with `audit.policyReports.installCRD=true`): nothing without the API, one
//! report per namespace and one for the cluster, written only when they change, results and reports
//! gone with their pods, other tools' reports never touched, and a huge namespace capped.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use registryx_guard::audit::reports::{
    ClusterPolicyReport, MANAGED_BY_LABEL, MAX_RESULTS, OMITTED_ANNOTATION, PolicyReport,
    PolicyReportFields, PolicyReportResult, PolicyReportSummary, PolicyReports, PolicyResult,
    PublishStats, REPORT_NAME, ReportResult,
};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::assert_success;
use crate::support::helm::{NAMESPACE, RELEASE, documents, helm_template};

/// A control plane with the chart's ServiceAccount and ClusterRole; the client acts as that account.
async fn control_plane() -> (ControlPlane, kube::Client) {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    let rendered = helm_template(&[]);
    assert_success("helm template", &rendered);
    let needed = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"];
    let items: Vec<serde_json::Value> = documents(&String::from_utf8_lossy(&rendered.stdout))
        .into_iter()
        .filter(|doc| needed.contains(&doc["kind"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(items.len(), needed.len(), "{items:#?}");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    assert_success(
        "the chart's ServiceAccount and ClusterRole",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &list.to_string()),
    );
    let client = cluster
        .client_as(&format!("system:serviceaccount:{NAMESPACE}:{RELEASE}"))
        .await;
    (cluster, client)
}

/// Where the CRDs come from: the generated file, or the chart with `audit.policyReports.installCRD`.
pub(crate) enum Crds {
    Generated,
    FromChart,
}

/// The generated CRDs, applied and established.
pub(crate) fn install_crds(cluster: &ControlPlane, from: Crds) {
    let applied = match from {
        Crds::Generated => {
            let crds = crate::support::repo_root().join("crds/policyreports.wgpolicyk8s.io.yaml");
            cluster.kubectl(&["apply", "-f", crds.to_str().unwrap()])
        }
        Crds::FromChart => {
            let wanted = |values: &[&str]| -> Vec<serde_json::Value> {
                let rendered = helm_template(values);
                assert_success("helm template", &rendered);
                documents(&String::from_utf8_lossy(&rendered.stdout))
                    .into_iter()
                    .filter(|doc| doc["spec"]["group"] == "wgpolicyk8s.io")
                    .collect()
            };
            assert!(
                wanted(&[]).is_empty(),
                "the chart installs the PolicyReport CRDs by default"
            );
            let items = wanted(&["audit.policyReports.installCRD=true"]);
            assert_eq!(items.len(), 2, "{items:#?}");
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            cluster.kubectl_with_stdin(&["apply", "-f", "-"], &list.to_string())
        }
    };
    assert_success("apply the PolicyReport CRDs", &applied);
    assert_success(
        "CRDs established",
        &cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/policyreports.wgpolicyk8s.io",
            "crd/clusterpolicyreports.wgpolicyk8s.io",
            "--timeout=30s",
        ]),
    );
}

fn namespaces(cluster: &ControlPlane, names: &[&str]) {
    for name in names {
        assert_success(
            "namespace",
            &cluster.kubectl(&["create", "namespace", name]),
        );
    }
}

fn result(namespace: Option<&str>, pod: &str, policy: &str, passed: bool) -> ReportResult {
    ReportResult {
        namespace: namespace.map(str::to_owned),
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
            "no_signature: no signature at all for the digest; sign it with cosign sign --key ..."
                .to_owned()
        },
    }
}

/// Another tool's report (no label of ours) named `name` in `namespace`.
async fn foreign_report(admin: &kube::Client, namespace: &str, name: &str) -> PolicyReport {
    let mut report = PolicyReport::new(
        name,
        PolicyReportFields {
            summary: PolicyReportSummary {
                pass: 1,
                ..PolicyReportSummary::default()
            },
            results: vec![PolicyReportResult {
                source: "kyverno".to_owned(),
                policy: "require-labels".to_owned(),
                result: Some(PolicyResult::Pass),
                ..PolicyReportResult::default()
            }],
            ..PolicyReportFields::default()
        },
    );
    report.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY_LABEL.to_owned(),
        "kyverno".to_owned(),
    )]));
    Api::<PolicyReport>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &report)
        .await
        .unwrap()
}

async fn ours(admin: &kube::Client, namespace: &str) -> Option<PolicyReport> {
    Api::<PolicyReport>::namespaced(admin.clone(), namespace)
        .get_opt(REPORT_NAME)
        .await
        .unwrap()
}

fn resource_version(meta: &ObjectMeta) -> String {
    meta.resource_version.clone().unwrap()
}

/// (pod, policy, result) of each result, in the report's order.
fn rows(report: &PolicyReport) -> Vec<(String, String, PolicyResult)> {
    report
        .spec
        .results
        .iter()
        .map(|r| {
            let pod: &ObjectReference = &r.resources[0];
            (
                pod.name.clone().unwrap(),
                r.policy.clone(),
                r.result.unwrap(),
            )
        })
        .collect()
}

fn row(pod: &str, policy: &str, result: PolicyResult) -> (String, String, PolicyResult) {
    (pod.to_owned(), policy.to_owned(), result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_follow_the_pods_and_leave_other_tools_reports_alone() {
    let (cluster, client) = control_plane().await;
    let admin = cluster.client().await;
    assert!(
        PolicyReports::discover(client.clone())
            .await
            .unwrap()
            .is_none(),
        "no CRD, yet the API was found"
    );
    install_crds(&cluster, Crds::Generated);
    let reports = PolicyReports::discover(client.clone())
        .await
        .unwrap()
        .expect("the CRDs are installed");
    namespaces(&cluster, &["team-a", "team-b", "team-c"]);
    let kyverno = foreign_report(&admin, "team-a", "kyverno-pod-a1").await;
    // Another tool's report that happens to bear our name: a forced apply would take it over.
    let squatter = foreign_report(&admin, "team-c", REPORT_NAME).await;

    let a1_signed = result(Some("team-a"), "a1", "signed", false);
    let a1_rego = result(Some("team-a"), "a1", "rego-rules", true);
    let a2_signed = result(Some("team-a"), "a2", "signed", true);
    let b1_signed = result(Some("team-b"), "b1", "signed", false);
    let cluster_wide = result(None, "static-web", "signed", true);
    let first = [
        a2_signed.clone(),
        a1_rego.clone(),
        b1_signed.clone(),
        cluster_wide.clone(),
        a1_signed.clone(),
    ];
    let stats = reports.publish(&first).await.unwrap();
    assert_eq!(
        stats,
        PublishStats {
            written: 3,
            ..PublishStats::default()
        }
    );

    let team_a = ours(&admin, "team-a").await.expect("team-a's report");
    assert_eq!(
        rows(&team_a),
        [
            row("a1", "signed", PolicyResult::Fail),
            row("a1", "rego-rules", PolicyResult::Pass),
            row("a2", "signed", PolicyResult::Pass),
        ],
        "failing first, then by pod and policy"
    );
    assert_eq!(
        team_a.spec.summary,
        PolicyReportSummary {
            pass: 2,
            fail: 1,
            ..PolicyReportSummary::default()
        }
    );
    let failing = &team_a.spec.results[0];
    assert_eq!(failing.source, "registryx-guard");
    assert_eq!(failing.rule.as_deref(), Some("release-key"));
    assert!(
        failing
            .message
            .as_deref()
            .unwrap()
            .starts_with("no_signature"),
        "{failing:?}"
    );
    assert_eq!(failing.properties["image"], "registry.example/team/a1:1");
    assert_eq!(failing.resources[0].uid.as_deref(), Some("uid-a1"));
    assert_eq!(failing.resources[0].namespace.as_deref(), Some("team-a"));
    assert!(failing.timestamp.is_some());
    assert_eq!(
        team_a.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
        "registryx-guard"
    );
    let team_b = ours(&admin, "team-b").await.expect("team-b's report");
    assert_eq!(rows(&team_b), [row("b1", "signed", PolicyResult::Fail)]);
    let cluster_report = Api::<ClusterPolicyReport>::all(admin.clone())
        .get(REPORT_NAME)
        .await
        .unwrap();
    assert_eq!(cluster_report.spec.results.len(), 1);
    assert_eq!(cluster_report.spec.summary.pass, 1);
    assert_eq!(cluster_report.spec.results[0].resources[0].namespace, None);
    // kubectl shows the counts in the CRD's columns.
    let table = cluster.kubectl(&["get", "policyreport", "-A"]);
    assert_success("kubectl get policyreport -A", &table);
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("team-a") && l.contains(REPORT_NAME))
        .unwrap_or_else(|| panic!("no team-a report in:\n{table}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&columns[2..7], ["2", "1", "0", "0", "0"], "{table}");

    // The same findings in another order: nothing is written.
    let again: Vec<ReportResult> = first.iter().rev().cloned().collect();
    let stats = reports.publish(&again).await.unwrap();
    assert_eq!(
        stats,
        PublishStats {
            unchanged: 3,
            ..PublishStats::default()
        }
    );
    assert_eq!(
        resource_version(&ours(&admin, "team-a").await.unwrap().metadata),
        resource_version(&team_a.metadata),
        "an unchanged report was rewritten"
    );
    // Another process (a new Lease holder) knows from the report itself that nothing changed.
    let successor = PolicyReports::discover(client.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(successor.publish(&again).await.unwrap().written, 0);

    // Pod a2 went away: its result goes, the others keep the time they were first found.
    let without_a2 = [
        a1_signed.clone(),
        a1_rego.clone(),
        b1_signed.clone(),
        cluster_wide.clone(),
    ];
    let stats = reports.publish(&without_a2).await.unwrap();
    assert_eq!((stats.written, stats.unchanged), (1, 2), "{stats:?}");
    let team_a_now = ours(&admin, "team-a").await.unwrap();
    assert_eq!(
        rows(&team_a_now),
        [
            row("a1", "signed", PolicyResult::Fail),
            row("a1", "rego-rules", PolicyResult::Pass),
        ]
    );
    assert_eq!(
        (team_a_now.spec.summary.pass, team_a_now.spec.summary.fail),
        (1, 1)
    );
    assert_eq!(
        team_a_now.spec.results[0].timestamp, failing.timestamp,
        "a result that stayed was stamped again"
    );

    // team-b and the cluster-wide findings are gone: their reports are deleted. team-c's report name
    // belongs to another tool: nothing is written there.
    let team_c = result(Some("team-c"), "c1", "signed", false);
    let stats = reports
        .publish(&[a1_signed.clone(), a1_rego.clone(), team_c])
        .await
        .unwrap();
    assert_eq!(
        stats,
        PublishStats {
            unchanged: 1,
            deleted: 2,
            foreign: 1,
            ..PublishStats::default()
        }
    );
    assert!(
        ours(&admin, "team-b").await.is_none(),
        "team-b's report stayed"
    );
    assert!(
        Api::<ClusterPolicyReport>::all(admin.clone())
            .get_opt(REPORT_NAME)
            .await
            .unwrap()
            .is_none(),
        "the ClusterPolicyReport stayed"
    );

    // Other tools' reports: never changed.
    for (namespace, report) in [("team-a", &kyverno), ("team-c", &squatter)] {
        let now = Api::<PolicyReport>::namespaced(admin.clone(), namespace)
            .get(report.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(
            resource_version(&now.metadata),
            resource_version(&report.metadata),
            "{namespace}: another tool's report was written"
        );
        assert_eq!(now.spec.results[0].source, "kyverno");
    }

    // Nothing found at all: every report of ours goes, and other tools' stay.
    let stats = reports.publish(&[]).await.unwrap();
    assert_eq!(stats.deleted, 1, "{stats:?}");
    assert!(ours(&admin, "team-a").await.is_none());
    let left = Api::<PolicyReport>::all(admin.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let mut names: Vec<String> = left
        .items
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r.metadata.namespace.clone().unwrap(),
                r.metadata.name.clone().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, ["team-a/kyverno-pod-a1", "team-c/registryx-guard"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_namespace_is_capped_under_the_api_servers_object_limit() {
    let (cluster, client) = control_plane().await;
    install_crds(&cluster, Crds::FromChart);
    namespaces(&cluster, &["crowded"]);
    let reports = PolicyReports::discover(client).await.unwrap().unwrap();
    // 5,000 pods with a long refusal each: about 5 MB as results, over the ~1.5 MiB an object may be.
    let long = "rego: ".to_owned() + &"the image carries a CRITICAL finding; ".repeat(20);
    let results: Vec<ReportResult> = (0..5_000)
        .map(|i| ReportResult {
            message: if i % 4 == 0 {
                long.clone()
            } else {
                "verified".to_owned()
            },
            ..result(
                Some("crowded"),
                &format!("pod-{i:05}"),
                "signed",
                i % 4 != 0,
            )
        })
        .collect();
    let stats = reports.publish(&results).await.unwrap();
    assert_eq!(
        (stats.written, stats.capped, stats.failed),
        (1, 1, 0),
        "{stats:?}"
    );

    let report = ours(&cluster.client().await, "crowded").await.unwrap();
    assert_eq!(
        (report.spec.summary.fail, report.spec.summary.pass),
        (1_250, 3_750),
        "the summary counts every result found"
    );
    // At most MAX_RESULTS, fewer where the byte budget runs out first (it does with these messages),
    // and the annotation says how many are left out.
    let kept = report.spec.results.len();
    assert!((900..=MAX_RESULTS).contains(&kept), "{kept} results kept");
    assert!(
        report
            .spec
            .results
            .iter()
            .all(|r| r.result == Some(PolicyResult::Fail)),
        "passing results took the place of failing ones"
    );
    assert_eq!(
        report.metadata.annotations.as_ref().unwrap()[OMITTED_ANNOTATION],
        (5_000 - kept).to_string()
    );
    let size = serde_json::to_vec(&report).unwrap().len();
    assert!(size < 1_400_000, "the report is {size} bytes");
}
