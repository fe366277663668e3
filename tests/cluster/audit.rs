//! The background audit against a real etcd + kube-apiserver, a real registry and real cosign
//! signatures: what already runs re-checked against today's policies, and told in the policy's status,
//! in Events on the pods and in the metrics. No node: the pods stay Pending, which is all an audit
//! needs (it reads their images, never runs or touches them).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use registryx_guard::admission::{ImageDecider, Review, Scope, Unmatched};
use registryx_guard::audit::{Audit, AuditMetrics, AuditNamespaces, AuditSettings};
use registryx_guard::controller::{AuditLink, ControllerSettings};
use registryx_guard::decide::RequestContext;
use registryx_guard::policy::Mode;
use registryx_guard::policy::PolicySnapshot;
use registryx_guard::verify::{Verifier, VerifierSettings};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;

const NAMESPACE: &str = "registryx-guard";
const OPT_IN: &str = "registryx.io/include";

fn prepare(cluster: &ControlPlane, opted_in: &[&str], others: &[&str]) {
    cluster.install_crd();
    for namespace in std::iter::once(&NAMESPACE).chain(opted_in).chain(others) {
        assert_success(
            "namespace",
            &cluster.kubectl(&["create", "namespace", namespace]),
        );
    }
    for namespace in opted_in {
        let label = format!("{OPT_IN}=true");
        assert_success(
            "opt in",
            &cluster.kubectl(&["label", "namespace", namespace, &label]),
        );
    }
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }))
    .unwrap()
}

/// Creates `pods` (name, image) in `namespace`, 16 at a time; returns each one's resourceVersion.
async fn create_pods(
    client: &kube::Client,
    namespace: &str,
    pods: Vec<(String, String)>,
) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(pods)
        .map(|(name, image)| {
            let api = api.clone();
            async move {
                let created = api
                    .create(&PostParams::default(), &pod(&name, &image))
                    .await;
                created.unwrap().metadata.resource_version.unwrap()
            }
        })
        .buffered(16)
        .collect()
        .await
}

fn kubectl_text(cluster: &ControlPlane, args: &[&str]) -> String {
    String::from_utf8_lossy(&cluster.kubectl(args).stdout).into_owned()
}

/// Polls `condition` every 100 ms for up to `limit`; returns how long it took.
async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The audit's parts over `cluster`, with a fresh verifier and the policy controller's snapshot.
struct Rig {
    verifier: std::sync::Arc<Verifier>,
    metrics: prometheus_client::registry::Registry,
    audit: Audit,
    snapshot: registryx_guard::policy::SharedSnapshot,
    link: AuditLink,
}

async fn rig(cluster: &ControlPlane, requests_per_second: f64, audited: AuditNamespaces) -> Rig {
    let client = cluster.client().await;
    let verifier = std::sync::Arc::new(Verifier::new(VerifierSettings::default(), None));
    let snapshot = registryx_guard::policy::shared(PolicySnapshot::default());
    let namespaces = registryx_guard::controller::namespace_store(client.clone());
    namespaces.wait_until_ready().await.unwrap();
    let mut metrics = prometheus_client::registry::Registry::default();
    let link = AuditLink::default();
    let settings = AuditSettings {
        // Only the triggers under test start a pass.
        interval: Duration::from_secs(3600),
        requests_per_second,
        namespaces: audited,
        ..AuditSettings::default()
    };
    let audit = Audit::new(
        client,
        snapshot.clone(),
        verifier.clone(),
        namespaces,
        link.clone(),
        settings,
        AuditMetrics::register(&mut metrics),
    );
    Rig {
        verifier,
        metrics,
        audit,
        snapshot,
        link,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_shows_in_status_events_and_metrics_and_signing_clears_them() {
    let cluster = ControlPlane::start();
    prepare(&cluster, &["team"], &["elsewhere"]);
    let registry = Registry::distribution();
    let (k1, k2) = (Cosign::with_new_key_pair(), Cosign::with_new_key_pair());
    let app = registry.push_image("team/app", "v1", "app").await;
    let api = registry.push_image("team/api", "v1", "api").await;
    for image in [&app, &api] {
        k1.sign(&image.reference, Format::Legacy);
    }
    let client = cluster.client().await;
    let created = create_pods(
        &client,
        "team",
        vec![
            ("web-0".into(), app.reference.clone()),
            ("web-1".into(), api.reference.clone()),
        ],
    )
    .await;
    // Not opted in: not audited (the webhook does not govern it either).
    create_pods(
        &client,
        "elsewhere",
        vec![("stray".into(), app.reference.clone())],
    )
    .await;
    let policy = |key: &Cosign| PolicySpec::key(&registry.host, &key.public_key_pem()).yaml();
    assert_success(
        "policy under k1",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy(&k1)),
    );

    let rig = rig(&cluster, 50.0, AuditNamespaces::OptIn).await;
    let mut settings = ControllerSettings::new(NAMESPACE, "replica-a");
    settings.audit = rig.link.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(registryx_guard::controller::run_until(
        client.clone(),
        rig.snapshot.clone(),
        settings,
        || {},
        async {
            let _ = stopped.await;
        },
    ));
    // The PolicyReports where the cluster serves them, as the chart wires them.
    crate::policy_reports::install_crds(&cluster, crate::policy_reports::Crds::Generated);
    let audit = rig.audit.with_sink(std::sync::Arc::new(
        registryx_guard::audit::ReportsSink::new(client.clone()),
    ));
    let audit = tokio::spawn(audit.run(std::future::pending()));
    let report = |path: &str| {
        kubectl_text(
            &cluster,
            &[
                "get",
                "policyreport",
                "registryx-guard",
                "-n",
                "team",
                "-o",
                &format!("jsonpath={path}"),
            ],
        )
    };
    let violations = || {
        kubectl_text(
            &cluster,
            &[
                "get",
                "isp",
                "signed",
                "-o",
                "jsonpath={.status.violations}",
            ],
        )
    };

    // Admitted under k1: audited, nothing refused.
    let limit = Duration::from_secs(60);
    let took = eventually("violations 0 under k1", limit, || violations() == "0").await;
    println!("first pass written to status after {took:?}");

    // The key rotated to k2: within one pass, status, events and the metric name both pods.
    assert_success(
        "rotate to k2",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy(&k2)),
    );
    let took = eventually("violations 2 under k2", limit, || violations() == "2").await;
    println!("rotation -> status violations in {took:?}");
    let offenders = kubectl_text(
        &cluster,
        &[
            "get",
            "isp",
            "signed",
            "-o",
            "jsonpath={range .status.offenders[*]}{.pod}|{.image}|{.reason} {end}",
        ],
    );
    assert!(
        offenders.contains(&format!("team/web-0|{}|other_signer", app.reference))
            && offenders.contains(&format!("team/web-1|{}|other_signer", api.reference))
            && !offenders.contains("stray"),
        "{offenders}"
    );
    let columns = kubectl_text(&cluster, &["get", "isp", "signed"]);
    assert!(columns.contains("VIOLATIONS"), "{columns}");
    let events = || {
        kubectl_text(
            &cluster,
            &[
                "get",
                "events",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.reason}/{.involvedObject.namespace}/{.involvedObject.name}/{.message}\n{end}",
            ],
        )
    };
    eventually("an event on each pod", limit, || {
        let events = events();
        ["web-0", "web-1"].iter().all(|pod| {
            events.lines().any(|e| {
                e.starts_with(&format!("WouldBeRefused/team/{pod}/")) && e.contains("other_signer")
            })
        })
    })
    .await;
    assert!(!events().contains("stray"), "{}", events());
    let metric = "registryx_guard_audit_violations{policy=\"signed\",namespace=\"team\",reason=\"other_signer\"} 2";
    assert!(
        metrics_text(&rig.metrics).contains(metric),
        "{}",
        metrics_text(&rig.metrics)
    );
    // The namespace's PolicyReport fails both pods, for that reason, and names nothing elsewhere.
    let rows = "{range .results[*]}{.resources[0].name}|{.result}|{.message}\n{end}";
    eventually("the PolicyReport fails both pods", limit, || {
        let rows = report(rows);
        ["web-0", "web-1"].iter().all(|pod| {
            rows.lines()
                .any(|r| r.starts_with(&format!("{pod}|fail|")) && r.contains("other_signer"))
        })
    })
    .await;
    assert!(!report(rows).contains("stray"), "{}", report(rows));
    // Once per pod and offence: later passes (a period) tell nothing new.
    let told = events().matches("WouldBeRefused").count();

    // Signed with k2 (and the push events that say so): status and the metric clear.
    for image in [&app, &api] {
        k2.sign(&image.reference, Format::Legacy);
    }
    rig.verifier.invalidate_repositories(
        ["team/app".to_owned(), "team/api".to_owned()]
            .into_iter()
            .collect(),
    );
    let took = eventually("violations 0 under k2", limit, || violations() == "0").await;
    println!("signed with k2 + push events -> status cleared in {took:?}");
    let offenders = kubectl_text(
        &cluster,
        &["get", "isp", "signed", "-o", "jsonpath={.status.offenders}"],
    );
    assert_eq!(offenders, "");
    let text = metrics_text(&rig.metrics);
    assert!(
        !text.contains("registryx_guard_audit_violations{"),
        "{text}"
    );
    assert!(text.contains("registryx_guard_audit_pods 2"), "{text}");
    assert_eq!(events().matches("WouldBeRefused").count(), told);
    eventually("the PolicyReport passes both pods", limit, || {
        report("{.summary.fail}/{.summary.pass}") == "0/2"
    })
    .await;

    // Nothing evicted or changed: the pods are there, as they were created.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let now: Vec<String> = futures::future::join_all(["web-0", "web-1"].map(|n| pods.get(n)))
        .await
        .into_iter()
        .map(|p| p.unwrap().metadata.resource_version.unwrap())
        .collect();
    assert_eq!(now, created);

    audit.abort();
    let _ = stop.send(());
    controller.await.unwrap().unwrap();
}

/// 5,000 pods of 50 distinct images: the registry is asked about each image once, and a warm pass
/// goes through them at the rate BENCHMARKS.md reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_pods_of_fifty_images_cost_one_check_per_image() {
    const IMAGES: usize = 50;
    const PODS: usize = 5_000;
    let cluster = ControlPlane::start();
    prepare(&cluster, &["fleet"], &[]);
    let registry = Registry::distribution();
    let key = Cosign::with_new_key_pair();
    let mut images = Vec::new();
    for i in 0..=IMAGES {
        images.push(
            registry
                .push_image(&format!("fleet/app-{i}"), "v1", &format!("seed-{i}"))
                .await,
        );
    }
    // Signed four at a time: cosign is a process per image.
    std::thread::scope(|scope| {
        for chunk in images.chunks(images.len().div_ceil(4)) {
            let key = &key;
            scope.spawn(move || {
                for image in chunk {
                    key.sign(&image.reference, Format::Legacy);
                }
            });
        }
    });
    let policy = PolicySpec::key(&registry.host, &key.public_key_pem()).yaml();
    assert_success(
        "policy",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy),
    );
    let client = cluster.client().await;
    let rig = rig(&cluster, 1000.0, AuditNamespaces::OptIn).await;
    let settings = ControllerSettings::new(NAMESPACE, "replica-a");
    let (snapshot, controller_client) = (rig.snapshot.clone(), client.clone());
    let controller = tokio::spawn(registryx_guard::controller::run(
        controller_client,
        snapshot,
        settings,
        || {},
    ));
    eventually(
        "the policy in the snapshot",
        Duration::from_secs(60),
        || !rig.snapshot.load().policies.is_empty(),
    )
    .await;
    let mut auditor = rig.audit.start();
    assert!(auditor.ready().await);

    // One image's requests, cold: the measure of the bound.
    create_pods(
        &client,
        "fleet",
        vec![("calibration".into(), images[IMAGES].reference.clone())],
    )
    .await;
    eventually("the calibration pod", Duration::from_secs(30), || {
        auditor.subjects().len() == 1
    })
    .await;
    let one = auditor.pass().await;
    assert_eq!((one.images, one.checked), (1, 1));
    assert!(one.requests > 0, "a cold check reads the registry");

    let started = Instant::now();
    let pods: Vec<(String, String)> = (0..PODS)
        .map(|i| (format!("pod-{i}"), images[i % IMAGES].reference.clone()))
        .collect();
    create_pods(&client, "fleet", pods).await;
    println!("{PODS} pods created in {:?}", started.elapsed());
    eventually(
        "every pod in the inventory",
        Duration::from_secs(120),
        || auditor.subjects().len() == PODS + 1,
    )
    .await;

    // The registry's own access log counts what it was asked, beside the verifier's counter.
    let served = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains(" HTTP/1.1\""))
            .count() as u64
    };
    let served_before = served();
    let cold = auditor.pass().await;
    let served_cold = served() - served_before;
    assert_eq!(
        (cold.subjects, cold.images, cold.checked),
        (PODS + 1, IMAGES + 1, IMAGES)
    );
    assert!(
        cold.requests <= IMAGES as u64 * one.requests,
        "{} registry requests for {IMAGES} images of {} each",
        cold.requests,
        one.requests
    );
    assert!(
        served_cold <= IMAGES as u64 * one.requests,
        "the registry served {served_cold} requests for {IMAGES} images of {} each",
        one.requests
    );

    auditor.new_round();
    let warm = auditor.pass().await;
    assert_eq!(warm.checked, IMAGES + 1);
    let pods_per_second = warm.subjects as f64 / warm.elapsed.as_secs_f64();
    println!(
        "audit of {} pods, {} images: one image cold {} requests; cold pass {:?} ({} requests, {} served by the registry); \
         warm pass {:?} ({} requests, {pods_per_second:.0} pods/s)",
        cold.subjects,
        cold.images,
        one.requests,
        cold.elapsed,
        cold.requests,
        served_cold,
        warm.elapsed,
        warm.requests,
    );
    assert_eq!(
        warm.requests, 0,
        "a warm pass reads nothing from the registry"
    );
    controller.abort();
}

/// A policy in `mode: audit` over namespaces that have not opted in (`--audit-namespaces all`): the
/// webhook's decision admits with no warning, and the audit reports the pod and the pod-less
/// Deployment it would refuse; with the default `optIn`, those namespaces are not audited at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_in_namespaces_not_opted_in_is_reported_and_refuses_nothing() {
    let cluster = ControlPlane::start();
    prepare(&cluster, &[], &["newcomer"]);
    let registry = Registry::distribution();
    let unsigned = registry.push_image("team/app", "v1", "unsigned").await;
    let key = Cosign::with_new_key_pair();
    let policy = PolicySpec::key(&registry.host, &key.public_key_pem()).mode(Mode::Audit);
    assert_success(
        "dry-run policy",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy.yaml()),
    );
    let client = cluster.client().await;
    create_pods(
        &client,
        "newcomer",
        vec![("solo".into(), unsigned.reference.clone())],
    )
    .await;
    // No controller-manager here: the Deployment never gets a ReplicaSet or pods, so its template is
    // what the audit checks.
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "newcomer"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": unsigned.reference}]},
            },
        },
    });
    assert_success(
        "deployment",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &deployment.to_string()),
    );

    let opted_in_only = rig(&cluster, 50.0, AuditNamespaces::OptIn).await;
    let all = rig(&cluster, 50.0, AuditNamespaces::All).await;
    let controller = tokio::spawn(registryx_guard::controller::run(
        client.clone(),
        all.snapshot.clone(),
        ControllerSettings::new(NAMESPACE, "replica-a"),
        || {},
    ));
    eventually(
        "the policy in the snapshot",
        Duration::from_secs(60),
        || !all.snapshot.load().policies.is_empty(),
    )
    .await;

    // Admission: a refusing verdict of an audit policy neither refuses nor warns.
    let decider = ImageDecider::new(
        all.snapshot.clone(),
        all.verifier.clone(),
        Unmatched::Deny,
        4,
    );
    let context = RequestContext::default();
    let recorded = Default::default();
    let scope = |review| Scope {
        labels: None,
        context: &context,
        recorded: &recorded,
        review,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let admitted = decider
        .decide(
            "containers[app]",
            &unsigned.reference,
            &scope(Review::Validate),
            deadline,
        )
        .await;
    assert!(
        admitted.admitted() && admitted.warnings.is_empty(),
        "{admitted:?}"
    );
    let audited = decider
        .decide("", &unsigned.reference, &scope(Review::Audit), deadline)
        .await;
    let verdict = audited.verdict.as_ref().expect("verified");
    assert!(!verdict.policies[0].passed(), "{verdict:?}");

    // optIn: nothing here is governed, nothing audited.
    let mut auditor = opted_in_only.audit.start();
    assert!(auditor.ready().await);
    let pass = auditor.pass().await;
    assert_eq!((pass.subjects, pass.checked), (0, 0));

    // all: the pod and the Deployment's template, one image checked once.
    let mut auditor = all.audit.start();
    assert!(auditor.ready().await);
    eventually(
        "the pod and the deployment",
        Duration::from_secs(30),
        || auditor.subjects().len() == 2,
    )
    .await;
    let pass = auditor.pass().await;
    assert_eq!((pass.subjects, pass.images, pass.checked), (2, 1, 1));
    let metric = "registryx_guard_audit_violations{policy=\"signed\",namespace=\"newcomer\",reason=\"no_signature\"} 2";
    let text = metrics_text(&all.metrics);
    assert!(text.contains(metric), "{text}");
    let events = kubectl_text(
        &cluster,
        &[
            "get",
            "events",
            "-n",
            "newcomer",
            "-o",
            "jsonpath={range .items[*]}{.reason}/{.involvedObject.kind}/{.involvedObject.name} {end}",
        ],
    );
    assert!(
        events.contains("WouldBeRefused/Pod/solo")
            && events.contains("WouldBeRefused/Deployment/web"),
        "{events}"
    );
    controller.abort();
}
