//! The policy controller against a real etcd + kube-apiserver: status conditions, events, the snapshot
//! the webhook reads, Secrets it depends on, and the status-writer Lease.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::assert_success;
use crate::support::policy::PolicySpec;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use registryx_guard::controller::{ControllerSettings, LeaseLock};
use registryx_guard::policy::{KeyAuthority, SecretKeyRef};
use registryx_guard::policy::{PolicySnapshot, SharedSnapshot};
use registryx_guard::registry::ImageRef;

const NAMESPACE: &str = "registryx-guard";

fn apply(cluster: &ControlPlane, yaml: &str) -> Output {
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], yaml)
}

fn prepare(cluster: &ControlPlane) {
    cluster.install_crd();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
}

/// Policy `name` over `registry.example/<name>/**`, whose authority `release` trusts the key `pem`.
fn key_policy(name: &str, pem: &str) -> PolicySpec {
    PolicySpec::key("registry.example", pem)
        .named(name)
        .images([format!("registry.example/{name}/**").as_str()])
        .with(|spec| spec.registry = None)
}

/// Polls `condition` every 50 ms for up to 20 s; returns how long it took.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn ready_status(cluster: &ControlPlane, name: &str) -> (String, String) {
    let output = cluster.kubectl(&[
        "get",
        "isp",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].message}",
    ]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, message) = text.split_once('|').unwrap_or(("", ""));
    (status.to_owned(), message.to_owned())
}

fn governs(snapshot: &SharedSnapshot, name: &str) -> (bool, bool) {
    let image = ImageRef::parse(&format!("registry.example/{name}/app:1")).unwrap();
    let governing = snapshot.load().governing(&image, None);
    (
        !governing.policies.is_empty(),
        !governing.not_ready.is_empty(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_reconciled_into_status_and_the_snapshot() {
    let cluster = ControlPlane::start();
    prepare(&cluster);
    let snapshot = registryx_guard::policy::shared(PolicySnapshot::default());
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(registryx_guard::controller::run(
        cluster.client().await,
        snapshot.clone(),
        ControllerSettings::new(NAMESPACE, "replica-a"),
        move || {
            let _ = synced_tx.send(());
        },
    ));
    tokio::time::timeout(Duration::from_secs(30), synced_rx)
        .await
        .expect("first sync")
        .unwrap();
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();

    // A valid policy: Ready, and in the snapshot.
    assert_success(
        "apply valid",
        &apply(&cluster, &key_policy("valid", &pem).yaml()),
    );
    let took = eventually("valid in the snapshot", || {
        governs(&snapshot, "valid") == (true, false)
    })
    .await;
    println!("policy propagation: apply -> snapshot in {took:?}");
    eventually("valid Ready=True", || {
        ready_status(&cluster, "valid").0 == "True"
    })
    .await;

    // A broken key: Ready=False naming the problem, an event, and its images refused (not ready).
    let broken = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----";
    assert_success(
        "apply broken",
        &apply(&cluster, &key_policy("broken", broken).yaml()),
    );
    eventually("broken Ready=False", || {
        ready_status(&cluster, "broken").0 == "False"
    })
    .await;
    let (_, message) = ready_status(&cluster, "broken");
    assert!(
        message.contains("authority \"release\"") && message.contains("refused until it is fixed"),
        "{message}"
    );
    assert_eq!(governs(&snapshot, "broken"), (false, true));
    eventually("an Invalid event", || {
        let events = cluster.kubectl(&[
            "get",
            "events",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.reason}/{.regarding.name}{.involvedObject.name} {end}",
        ]);
        String::from_utf8_lossy(&events.stdout).contains("Invalid/broken")
    })
    .await;

    // Fixed: Ready again.
    assert_success(
        "fix broken",
        &apply(&cluster, &key_policy("broken", &pem).yaml()),
    );
    eventually("broken fixed", || {
        ready_status(&cluster, "broken").0 == "True"
    })
    .await;
    assert_eq!(governs(&snapshot, "broken"), (true, false));

    // A glob that can never match a reference (CEL cannot see it: an empty tag) is not Ready, and says
    // why in `kubectl get isp`.
    let never = key_policy("never", &pem)
        .images(["registry.example/never/app:"])
        .yaml();
    assert_success("apply never", &apply(&cluster, &never));
    eventually("never Ready=False", || {
        ready_status(&cluster, "never").0 == "False"
    })
    .await;
    let (_, message) = ready_status(&cluster, "never");
    assert!(
        message.contains("registry.example/never/app:") && message.contains("can never match"),
        "{message}"
    );
    // Until it is fixed it stands for every image: a typo must not let images through elsewhere.
    assert_eq!(governs(&snapshot, "anything-else"), (false, true));
    assert_success(
        "delete never",
        &cluster.kubectl(&["delete", "isp", "never"]),
    );
    eventually("never gone", || {
        governs(&snapshot, "anything-else") == (false, false)
    })
    .await;

    // A key from a Secret that does not exist yet: not ready, then ready once the Secret appears.
    let secret_ref = key_policy("from-secret", "").with(|spec| {
        spec.authorities[0].key = Some(KeyAuthority {
            data: None,
            secret_ref: Some(SecretKeyRef {
                name: "release-key".into(),
                namespace: None,
                key: None,
            }),
        })
    });
    assert_success("apply secret-ref", &apply(&cluster, &secret_ref.yaml()));
    eventually("from-secret Ready=False", || {
        ready_status(&cluster, "from-secret").0 == "False"
    })
    .await;
    assert!(
        ready_status(&cluster, "from-secret")
            .1
            .contains("Secret registryx-guard/release-key not found")
    );
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &pem).unwrap();
    assert_success(
        "create secret",
        &cluster.kubectl(&[
            "create",
            "secret",
            "generic",
            "release-key",
            "-n",
            NAMESPACE,
            &format!("--from-file=cosign.pub={}", key_file.path().display()),
        ]),
    );
    eventually("from-secret Ready=True", || {
        ready_status(&cluster, "from-secret").0 == "True"
    })
    .await;

    // Deleted: gone from the snapshot.
    assert_success(
        "delete valid",
        &cluster.kubectl(&["delete", "isp", "valid"]),
    );
    eventually("valid gone", || {
        governs(&snapshot, "valid") == (false, false)
    })
    .await;

    let observed = cluster.kubectl(&[
        "get",
        "isp",
        "broken",
        "-o",
        "jsonpath={.metadata.generation}/{.status.observedGeneration}",
    ]);
    let text = String::from_utf8_lossy(&observed.stdout).into_owned();
    let (generation, observed) = text.split_once('/').unwrap();
    assert_eq!(generation, observed, "observedGeneration lags");
    controller.abort();
}

/// A control plane with the release namespace, and the Leases of that namespace.
async fn lease_api() -> (ControlPlane, kube::Api<Lease>) {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    let api = kube::Api::namespaced(cluster.client().await, NAMESPACE);
    (cluster, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_holds_the_status_lease() {
    let (_cluster, api) = lease_api().await;
    let duration = Duration::from_secs(2);
    let a = LeaseLock::new(api.clone(), "status", "replica-a", duration);
    let b = LeaseLock::new(api.clone(), "status", "replica-b", duration);

    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a free lease is taken"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a held lease is not taken"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    // Expiry is counted from when b first saw the renewed record, by b's own clock.
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a renewed lease is not taken"
    );
    tokio::time::sleep(duration + Duration::from_millis(300)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "an expired lease is taken over"
    );
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "the old holder lost it"
    );
    let lease = api.get("status").await.unwrap();
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("replica-b")
    );
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(1)
    );

    b.release().await.unwrap();
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a released lease is free"
    );
}

/// Expiry is not judged by the holder's renewTime against our clock (clocks differ between nodes): a
/// lease whose renewTime lies far in the past is still held until it has gone unchanged for its
/// duration by our own clock, and one whose renewTime lies in the future is taken once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_is_measured_on_our_own_clock() {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    let (_cluster, api) = lease_api().await;
    let duration = Duration::from_secs(2);
    for (name, skew) in [("past", -3600), ("future", 3600)] {
        let renewed = Timestamp::now() + SignedDuration::from_secs(skew);
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("replica-on-a-skewed-node".into()),
                lease_duration_seconds: Some(2),
                acquire_time: Some(MicroTime(renewed)),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        };
        api.create(&Default::default(), &lease).await.unwrap();
        let b = LeaseLock::new(api.clone(), name, "replica-b", duration);
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "{name}: a lease just seen is held, whatever its renewTime says"
        );
        tokio::time::sleep(duration + Duration::from_millis(300)).await;
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "{name}: a lease unchanged for its duration is taken"
        );
    }
}

/// When the controller stops (the server's shutdown), it clears the Lease's holder so that another
/// replica writes status at once; the status it wrote is owned by its server-side-apply field manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_released_on_shutdown() {
    let cluster = ControlPlane::start();
    prepare(&cluster);
    let client = cluster.client().await;
    let snapshot = registryx_guard::policy::shared(PolicySnapshot::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut settings = ControllerSettings::new(NAMESPACE, "replica-a");
    settings.lease_name = "status".into();
    let controller = tokio::spawn(registryx_guard::controller::run_until(
        client.clone(),
        snapshot,
        settings,
        || {},
        async move {
            let _ = stop_rx.await;
        },
    ));
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    assert_success(
        "apply valid",
        &apply(&cluster, &key_policy("valid", &pem).yaml()),
    );
    eventually("valid Ready=True", || {
        ready_status(&cluster, "valid").0 == "True"
    })
    .await;
    let managers = cluster.kubectl(&[
        "get",
        "imagesigningpolicy",
        "valid",
        "--show-managed-fields",
        "-o",
        "jsonpath={range .metadata.managedFields[?(@.subresource==\"status\")]}{.manager}/{.operation} {end}",
    ]);
    assert_success("managed fields", &managers);
    assert_eq!(
        String::from_utf8_lossy(&managers.stdout).trim(),
        "registryx-guard/Apply"
    );
    let api: kube::Api<Lease> = kube::Api::namespaced(client, NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(api.get("status").await.unwrap()).as_deref(),
        Some("replica-a")
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("the controller stops")
        .unwrap()
        .unwrap();
    assert_eq!(holder(api.get("status").await.unwrap()), None);
    let b = LeaseLock::new(api, "status", "replica-b", Duration::from_secs(15));
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "another replica takes a released lease at once"
    );
}

/// Nothing Ready that cannot decide (issue 17): Rego that defines no decision the engine reads and a
/// glob no canonical reference can match were Ready through a real API server, governing nothing or
/// refusing nothing. Each is now Ready=False with the reason in `kubectl get isp`, and its images are
/// refused until it is fixed; a library module beside a deciding one stays Ready. Unknown fields never
/// get that far: the API server's strict field validation refuses them at `kubectl apply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_that_cannot_decide_are_not_ready_with_the_reason() {
    let cluster = ControlPlane::start();
    prepare(&cluster);
    let snapshot = registryx_guard::policy::shared(PolicySnapshot::default());
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(registryx_guard::controller::run(
        cluster.client().await,
        snapshot.clone(),
        ControllerSettings::new(NAMESPACE, "replica-a"),
        move || {
            let _ = synced_tx.send(());
        },
    ));
    tokio::time::timeout(Duration::from_secs(30), synced_rx)
        .await
        .expect("first sync")
        .unwrap();
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let policy = |name: &str, modules: &[(&str, &str)]| key_policy(name, &pem).rego(modules).yaml();

    let not_ready = [
        (
            "typo-package",
            policy(
                "typo-package",
                &[(
                    "x.rego",
                    "package registryx.policies\ndefault allow = true\nviolations[msg] {\n  not input.is_signed\n  msg := \"unsigned\"\n}\n",
                )],
            ),
            vec![
                "module \"x.rego\" is in package registryx.policies (did you mean package registryx.policy?)",
                "the engine reads only deny, violations and allow in packages registry, registryx.policy and registryx_guard",
            ],
        ),
        (
            "opa-package",
            policy(
                "opa-package",
                &[(
                    "k8s.rego",
                    "package kubernetes.admission\ndeny contains \"unsigned\" if not input.signed\n",
                )],
            ),
            vec!["module \"k8s.rego\" is in package kubernetes.admission: it defines deny"],
        ),
        (
            "near-miss",
            policy(
                "near-miss",
                &[(
                    "d.rego",
                    "package registry\ndenies contains \"unsigned\" if not input.signed\n",
                )],
            ),
            vec!["denies (did you mean deny?)"],
        ),
        (
            "zero-port",
            key_policy("zero-port", &pem)
                .images(["reg*.invalid:0443/**"])
                .yaml(),
            vec!["glob \"reg*.invalid:0443/**\"", "write reg*.invalid:443/**"],
        ),
    ];
    for (name, yaml, _) in &not_ready {
        assert_success(&format!("apply {name}"), &apply(&cluster, yaml));
    }
    let library = policy(
        "library",
        &[
            (
                "lib.rego",
                "package team.lib\nis_prod if input.environment == \"prod\"\n",
            ),
            (
                "main.rego",
                "package registry\nimport data.team.lib\ndeny contains \"not in prod\" if lib.is_prod\n",
            ),
        ],
    );
    assert_success("apply library", &apply(&cluster, &library));

    for (name, _, needles) in &not_ready {
        eventually(&format!("{name} Ready=False"), || {
            ready_status(&cluster, name).0 == "False"
        })
        .await;
        let (_, message) = ready_status(&cluster, name);
        assert!(
            message.contains("refused until it is fixed"),
            "{name}: {message}"
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{name}: {needle:?} not in {message}"
            );
        }
    }
    for name in ["typo-package", "opa-package", "near-miss"] {
        assert_eq!(governs(&snapshot, name), (false, true), "{name}");
    }
    eventually("library Ready=True", || {
        ready_status(&cluster, "library").0 == "True"
    })
    .await;
    assert_eq!(
        governs(&snapshot, "library"),
        (true, true),
        "governed by library, and refused by the not-Ready zero-port (it stands for every image)"
    );

    // An unknown field is refused by the API server's strict field validation, field named.
    let typo = key_policy("typo-field", &pem).yaml() + "  mutateDigset: false\n";
    let output = apply(&cluster, &typo);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && said.contains("mutateDigset"),
        "{said}"
    );
    controller.abort();
}

/// The push-events ConfigMap is written up to five times a second per replica under a flood, and no
/// policy reads it: the controller's watch leaves it out, so those writes cost no rebuild of the
/// snapshot (nor a Lease renewal), while any other ConfigMap of the namespace still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_the_push_events_config_map_cost_no_reconcile() {
    let cluster = ControlPlane::start();
    prepare(&cluster);
    let client = cluster.client().await;
    let snapshot = registryx_guard::policy::shared(PolicySnapshot::default());
    let mut settings = ControllerSettings::new(NAMESPACE, "replica-a");
    settings.events_config_map = Some("rxg-events".into());
    // The loop also wakes every third of the lease; far beyond this test.
    settings.lease_duration = Duration::from_secs(600);
    let controller = tokio::spawn(registryx_guard::controller::run(
        client.clone(),
        snapshot.clone(),
        settings,
        || {},
    ));
    let revision = || snapshot.load().revision;
    eventually("first sync", || revision() > 0).await;
    let config_maps: kube::Api<ConfigMap> = kube::Api::namespaced(client, NAMESPACE);
    let write = |name: &'static str, n: usize| {
        let config_maps = config_maps.clone();
        async move {
            let patch = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": {"log": n.to_string()},
            });
            config_maps
                .patch(
                    name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&patch),
                )
                .await
                .unwrap();
        }
    };
    // Read before the write: the reconcile may come before `write` returns.
    let before = revision();
    write("other", 0).await;
    eventually("the other ConfigMap reconciled", || revision() > before).await;
    // Quiet first: one change can wake the loop twice (a notification that arrives during a rebuild
    // costs one more), so the baseline is taken once the revision has held still for a second.
    let mut before = revision();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = revision();
        if now == before {
            break;
        }
        before = now;
    }
    for n in 0..10 {
        write("rxg-events", n).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        revision(),
        before,
        "a write of the events ConfigMap rebuilt the snapshot"
    );
    write("other", 1).await;
    eventually("the other ConfigMap reconciled", || revision() > before).await;
    controller.abort();
}
