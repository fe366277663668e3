//! Push events shared between replicas through the events ConfigMap, against a real kube-apiserver:
//! two "replicas" in this process (each its own Verifier, push-events state, writer and watch on one
//! ConfigMap, created here as the chart creates it), real cosign signatures in a real registry. An event
//! that reaches either replica reaches the other within a second; a replica that starts later does not
//! act on what was written before it; a flood costs a bounded number of writes; a gap in the log, or a
//! log that does not parse, drops every cached result.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use registryx_guard::policy::CompiledPolicy;
use registryx_guard::refusal::Reason;
use registryx_guard::server::push::share::{KEPT_BATCHES, MAX_BATCH_REPOSITORIES};
use registryx_guard::server::push::{FLUSH_INTERVAL, PushCounters, PushEvents, PushToken};
use registryx_guard::verify::{ImageVerdict, Verifier};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::helm::{NAMESPACE, RELEASE, documents, helm_template};
use crate::support::registry::Registry;
use crate::support::verdicts::{
    BUDGET, altered_signature, assert_admitted, assert_refused, key_policy, legacy_signed_image,
    new_verifier, put_signature_manifest, signature_manifest, verify_with,
};

/// The chart's events ConfigMap of release [`RELEASE`].
const EVENTS: &str = "rxg-events";
const TOKEN: &str = "push-events-token-0123456789abcdef";
/// The contract is one second; past this the test fails (timing is for benchmarks, not for this test).
const GIVE_UP: Duration = Duration::from_secs(5);

/// A control plane with the release namespace and the chart's objects that the replicas need: the
/// events ConfigMap (empty), and the ServiceAccount with its Role. Returns the ServiceAccount's client,
/// for the replicas (what the chart's RBAC grants, no more), and the ConfigMaps as an administrator sees
/// them, for the test.
async fn control_plane() -> (ControlPlane, kube::Client, Api<ConfigMap>) {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    let rendered = helm_template(&[]);
    assert_success("helm template", &rendered);
    let needed = ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"];
    let items: Vec<serde_json::Value> = documents(&String::from_utf8_lossy(&rendered.stdout))
        .into_iter()
        .filter(|doc| needed.contains(&doc["kind"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(items.len(), needed.len(), "{items:#?}");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    assert_success(
        "the chart's ServiceAccount, Role and events ConfigMap",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &list.to_string()),
    );
    let replicas = cluster
        .client_as(&format!("system:serviceaccount:{NAMESPACE}:{RELEASE}"))
        .await;
    let config_maps = Api::namespaced(cluster.client().await, NAMESPACE);
    (cluster, replicas, config_maps)
}

/// The image the replicas verify: `team/app` by digest, under a policy trusting one key.
struct Image {
    reference: String,
    policy: Arc<CompiledPolicy>,
}

/// The repository RegistryX's events name.
const REPOSITORY: &str = "team/app";

/// One replica as `serve` assembles it: a Verifier, and push events sharing through the ConfigMap.
struct Replica {
    name: &'static str,
    verifier: Arc<Verifier>,
    counters: Arc<PushCounters>,
    events: PushEvents,
}

impl Replica {
    /// Starts sharing with `verifier` (and whatever it has cached); returns once its watch has seen the
    /// ConfigMap.
    async fn start(client: &kube::Client, name: &'static str, verifier: Arc<Verifier>) -> Replica {
        let counters = Arc::new(PushCounters::default());
        let events = PushEvents::new(
            PushToken::new(Some(TOKEN)).unwrap(),
            verifier.clone(),
            counters.clone(),
        )
        .shared_through(Api::namespaced(client.clone(), NAMESPACE), EVENTS, name);
        events.spawn_flusher();
        tokio::time::timeout(GIVE_UP, events.peers_synced())
            .await
            .unwrap_or_else(|_| panic!("{name}'s watch never saw the events ConfigMap"));
        Replica {
            name,
            verifier,
            counters,
            events,
        }
    }

    /// RegistryX's notification that `repository` changed, sent to this replica with the token.
    async fn notify(&self, repository: &str) {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
        );
        let event = format!(
            r#"{{"action":"push","repository":"{repository}","tag":"v1","digest":"sha256:00","user":"ci"}}"#
        );
        let (status, message) = self
            .events
            .handle(
                &headers,
                &"/registryx/events".parse().unwrap(),
                Body::from(event),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}: {message}", self.name);
    }

    async fn verify(&self, image: &Image) -> ImageVerdict {
        verify_with(&self.verifier, &image.reference, &image.policy, BUDGET).await
    }

    fn misses(&self) -> u64 {
        self.verifier.cache_stats().1
    }

    fn shared(&self) -> u64 {
        self.counters.shared.load(Relaxed)
    }

    fn applied_from_peers(&self) -> u64 {
        self.counters.from_peers.load(Relaxed)
    }

    /// Verifies `image` every 20 ms until `done` holds of the verdict; how long that took since
    /// `since`. Fails past [`GIVE_UP`].
    async fn until(
        &self,
        what: &str,
        image: &Image,
        since: Instant,
        mut done: impl FnMut(&ImageVerdict, &Replica) -> bool,
    ) -> Duration {
        loop {
            let verdict = self.verify(image).await;
            if done(&verdict, self) {
                let latency = since.elapsed();
                println!("{}: {what} after {latency:?}", self.name);
                return latency;
            }
            assert!(
                since.elapsed() < GIVE_UP,
                "{}: not {what} within {GIVE_UP:?}; last verdict {verdict:#?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Verifies until the cached result for `image` is found gone (a cache miss).
    async fn until_dropped(&self, what: &str, image: &Image, since: Instant) -> Duration {
        self.until(what, image, since, a_miss(self)).await
    }
}

/// Whether a verification since now missed the cache of `replica`.
fn a_miss(replica: &Replica) -> impl FnMut(&ImageVerdict, &Replica) -> bool + use<> {
    let before = replica.misses();
    move |_, replica| replica.misses() > before
}

/// Sends RegistryX's event for [`REPOSITORY`] to `sender`, then verifies on `watched` until `done`;
/// how long that took.
async fn event_reaches(
    sender: &Replica,
    watched: &Replica,
    what: &str,
    image: &Image,
    done: impl FnMut(&ImageVerdict, &Replica) -> bool,
) -> Duration {
    let sent = Instant::now();
    sender.notify(REPOSITORY).await;
    watched.until(what, image, sent, done).await
}

/// `team/app` signed in the legacy format, in a fresh registry (its digest made by `seed`), and the
/// registry, which stops when dropped.
async fn signed_image(seed: &str) -> (Registry, Image) {
    let (registry, cosign, pushed) = legacy_signed_image(seed).await;
    let image = Image {
        reference: pushed.by_digest(),
        policy: key_policy(&registry.host, &cosign),
    };
    (registry, image)
}

/// The text of `data.log` and its batches, as the replicas wrote them.
async fn log_of(config_maps: &Api<ConfigMap>) -> (String, Vec<serde_json::Value>) {
    let config_map = config_maps.get(EVENTS).await.unwrap();
    let text = config_map
        .data
        .unwrap_or_default()
        .remove("log")
        .unwrap_or_default();
    let log: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let batches = log["batches"].as_array().cloned().unwrap_or_default();
    (text, batches)
}

/// Replaces `data.log` with `text`, as someone with write access to the ConfigMap could.
async fn overwrite_log(config_maps: &Api<ConfigMap>, text: &str) {
    let mut config_map = config_maps.get(EVENTS).await.unwrap();
    config_map
        .data
        .get_or_insert_default()
        .insert("log".to_owned(), text.to_owned());
    config_maps
        .replace(EVENTS, &PostParams::default(), &config_map)
        .await
        .unwrap();
}

/// The attack: a refusal cached in the replica RegistryX did not notify outlives the signature, and an
/// admission cached there outlives the signature's removal. Each event goes to one replica; the other
/// must drop its cached result within a second.
#[tokio::test]
async fn a_push_event_reaches_the_other_replica_within_a_second() {
    let (_cluster, client, config_maps) = control_plane().await;
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let pushed = registry.push_image(REPOSITORY, "v1", "shared-events").await;
    let image = Image {
        reference: pushed.by_digest(),
        policy: key_policy(&registry.host, &cosign),
    };
    let a = Replica::start(&client, "replica-a", Arc::new(new_verifier())).await;
    let b = Replica::start(&client, "replica-b", Arc::new(new_verifier())).await;
    // The replicas run as the chart's ServiceAccount: the events ConfigMap is all they may write.
    let other = ConfigMap {
        metadata: ObjectMeta {
            name: Some("other".to_owned()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let refused = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &other)
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "{refused:?}"
    );

    // Both refuse the unsigned image and keep the refusal; once it is signed, B still refuses it from
    // its cache: the stale refusal a push event must end.
    for replica in [&a, &b] {
        assert_refused(&replica.verify(&image).await, Reason::NoSignature);
    }
    cosign.sign(&pushed.reference, Format::Legacy);
    assert_refused(&b.verify(&image).await, Reason::NoSignature);
    assert_eq!(
        b.verifier.cache_stats(),
        (1, 1),
        "B answered from its cache"
    );

    // RegistryX tells A (the Service chose it); B admits the signed image through the ConfigMap.
    let to_b = event_reaches(&a, &b, "admitted after A's event", &image, |v, _| {
        v.admitted()
    })
    .await;
    assert_admitted(&a.verify(&image).await);

    // Now both have the admission cached (ten minutes). The signature is replaced by one that does not
    // verify (the image is de-signed), and RegistryX tells B this time: A must refuse.
    for replica in [&a, &b] {
        assert_admitted(&replica.verify(&image).await);
    }
    let mut manifest = signature_manifest(&registry, &pushed).await;
    let signature = &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    *signature = altered_signature(signature.as_str().unwrap()).into();
    put_signature_manifest(&registry, &pushed, &manifest).await;
    assert_admitted(&a.verify(&image).await);
    let to_a = event_reaches(&b, &a, "refused after B's event", &image, |v, _| {
        !v.admitted()
    })
    .await;
    assert_refused(&a.verify(&image).await, Reason::OtherSigner);
    println!("event-to-other-replica latency: A to B {to_b:?}, B to A {to_a:?} (contract: 1 s)");

    assert_eq!((a.shared(), b.shared()), (1, 1), "one batch each");
    assert_eq!(
        (a.applied_from_peers(), b.applied_from_peers()),
        (1, 1),
        "each applied the other's"
    );
    for replica in [&a, &b] {
        assert_eq!(replica.counters.share_failures.load(Relaxed), 0);
    }
    let (_, batches) = log_of(&config_maps).await;
    let origins: Vec<_> = batches.iter().map(|b| b["origin"].clone()).collect();
    assert_eq!(origins, ["replica-a", "replica-b"], "{batches:?}");
    assert_eq!(batches[0]["repositories"], serde_json::json!([REPOSITORY]));
}

/// A replica that starts after events were written records the log as it finds it: it does not drop
/// what it has cached because of them, and it acts on the events that come after.
#[tokio::test]
async fn a_replica_that_starts_later_does_not_act_on_earlier_events() {
    let (_cluster, client, config_maps) = control_plane().await;
    let (_registry, image) = signed_image("late-replica").await;
    let a = Replica::start(&client, "replica-a", Arc::new(new_verifier())).await;
    for (written, repository) in [REPOSITORY, "team/other"].into_iter().enumerate() {
        a.notify(repository).await;
        let since = Instant::now();
        while a.shared() == written as u64 {
            assert!(since.elapsed() < GIVE_UP, "A wrote nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, written) = log_of(&config_maps).await;
    assert_eq!(written.len(), 2, "{written:?}");

    // C has team/app cached before it starts watching (a replica that started a moment ago).
    let verifier = Arc::new(new_verifier());
    for _ in 0..2 {
        assert_admitted(&verify_with(&verifier, &image.reference, &image.policy, BUDGET).await);
    }
    assert_eq!(verifier.cache_stats(), (1, 1));
    let c = Replica::start(&client, "replica-c", verifier).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_admitted(&c.verify(&image).await);
    assert_eq!(
        c.verifier.cache_stats(),
        (2, 1),
        "the events written before C started dropped its cached result"
    );
    assert_eq!(c.applied_from_peers(), 0);

    // C is listening: the next event drops it.
    event_reaches(&a, &c, "dropped after A's event", &image, a_miss(&c)).await;
    assert_eq!(c.applied_from_peers(), 1);
}

/// A flood of events for distinct repositories costs at most one ConfigMap write per flush interval and
/// ends with the other replica having dropped everything; a gap in the log, or a log that does not
/// parse, drops everything too, and sharing goes on afterwards.
#[tokio::test]
async fn a_flood_costs_bounded_writes_and_a_gap_or_garbage_drops_everything() {
    let (_cluster, client, config_maps) = control_plane().await;
    let (_registry, image) = signed_image("flood").await;
    let a = Replica::start(&client, "replica-a", Arc::new(new_verifier())).await;
    let b = Replica::start(&client, "replica-b", Arc::new(new_verifier())).await;
    for replica in [&a, &b] {
        assert_admitted(&replica.verify(&image).await);
    }

    // 5,000 events for distinct repositories, none of them team/app, spread by the Service over both
    // replicas, in waves of 100 every 40 ms: a flood over about ten flush intervals, in which both
    // replicas write and collide. B is watched from the first event: only A's batches name more than
    // its own sweeps drop, so a miss on team/app is A's batch applied.
    let started = Instant::now();
    let send = async {
        for wave in 0..50 {
            for n in 0..100 {
                let replica = if n % 2 == 0 { &a } else { &b };
                replica.notify(&format!("flood/app{wave}-{n}")).await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        started.elapsed()
    };
    let dropped = b.until_dropped("dropped everything during the flood", &image, started);
    let (flood, _) = tokio::join!(send, dropped);
    // Let the last batches out, then count the writes.
    let written = || (a.shared(), b.shared());
    let mut writes = written();
    loop {
        tokio::time::sleep(FLUSH_INTERVAL * 3).await;
        if written() == writes {
            break;
        }
        writes = written();
    }
    let bound = u64::try_from(flood.as_millis() / FLUSH_INTERVAL.as_millis()).unwrap() + 3;
    println!(
        "a flood of 5,000 events over {flood:?}: {writes:?} ConfigMap writes by A and B (bound {bound} each)"
    );
    for (replica, writes) in [("A", writes.0), ("B", writes.1)] {
        assert!(
            (1..=bound).contains(&writes),
            "{replica} wrote {writes} times in a flood of {flood:?}"
        );
    }
    let (text, batches) = log_of(&config_maps).await;
    assert!(
        batches.len() <= KEPT_BATCHES,
        "{} batches kept",
        batches.len()
    );
    assert_eq!(
        batches.last().unwrap()["seq"],
        serde_json::json!(writes.0 + writes.1),
        "every write is one batch in the log, none lost to the other replica's"
    );
    assert!(batches.iter().any(|b| b["all"] == true), "{text}");
    for batch in &batches {
        let names = batch["repositories"].as_array().map_or(0, Vec::len);
        assert!(
            names <= MAX_BATCH_REPOSITORIES,
            "{names} names in one batch"
        );
    }
    assert!(text.len() < 1 << 20);
    for replica in [&a, &b] {
        assert_eq!(replica.counters.share_failures.load(Relaxed), 0);
        // The flood ends with everything dropped: the other's last batch came after this verify.
        let misses = replica.misses();
        assert_admitted(&replica.verify(&image).await);
        assert_eq!(replica.misses(), misses + 1, "{}", replica.name);
    }

    // A gap: the log jumps past what B applied (a long disconnect). Only another repository is named,
    // yet B cannot know what it missed, so it drops everything.
    let newest = batches.last().unwrap()["seq"].as_u64().unwrap();
    let sent = Instant::now();
    overwrite_log(
        &config_maps,
        &format!(
            r#"{{"batches":[{{"seq":{},"origin":"replica-x","repositories":["unrelated/app"]}}]}}"#,
            newest + 5
        ),
    )
    .await;
    b.until_dropped("dropped everything after a gap", &image, sent)
        .await;

    // Garbage is a gap: everything dropped, no panic.
    assert_admitted(&b.verify(&image).await);
    let sent = Instant::now();
    overwrite_log(&config_maps, "{\"batches\": [ not json").await;
    b.until_dropped("dropped everything after garbage", &image, sent)
        .await;

    // And sharing goes on: A writes over the garbage, B applies it.
    assert_admitted(&b.verify(&image).await);
    let peers = b.applied_from_peers();
    event_reaches(&a, &b, "dropped after the next event", &image, a_miss(&b)).await;
    assert_eq!(b.applied_from_peers(), peers + 1);
    let (_, batches) = log_of(&config_maps).await;
    assert_eq!(
        batches.last().unwrap()["repositories"],
        serde_json::json!([REPOSITORY])
    );
}
