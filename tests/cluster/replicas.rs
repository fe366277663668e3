//! Every replica, one truth: the chart's two replicas behind their Service, on a node that runs them,
//! asked by the API server as it asks them (`/mutate` and `/validate` of one pod often reach different
//! replicas). A push event received by one replica reaches the other; a signature deleted without any
//! event stops admitting within the stated bound on both; and a replica killed with SIGKILL in the
//! middle of a stream of admissions costs what is measured here (BENCHMARKS.md, section 9).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::helm::{Helm, NAMESPACE};
use crate::support::node::Node;
use crate::support::policy::release_key_policy;
use crate::support::registry::Registry;
use crate::support::verdicts::signature_tag;

use super::pods::{Stream, crane_push, jsonpath, load_own_image, pause_image, text, wait_until};

const TOKEN: &str = "push-events-token-0123456789abcdef";
/// Admissions after each change, as the issue counts them.
const ADMISSIONS: usize = 20;
/// The chart's default `cache.verifiedMaxAgeSeconds`: the revocation bound without events.
const REVOCATION_BOUND: Duration = Duration::from_secs(30);

/// Field order is drop order: the node stops before its control plane.
struct Setup {
    _node: Node,
    cluster: ControlPlane,
    registry: Registry,
    cosign: Cosign,
    work: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Setup {
    /// Pushes a new image (its own digest) as `demo/app:<tag>`; signed or not.
    fn push(&self, tag: &str, signed: bool) -> (String, String) {
        let reference = format!("{}/demo/app:{tag}", self.registry.host);
        crane_push(&pause_image(self.work.path(), tag), &reference);
        if signed {
            self.cosign.sign(&reference, Format::Legacy);
        }
        let (_, digest, _, _) = self
            .runtime
            .block_on(self.registry.get_manifest("demo/app", tag));
        let digest = digest.expect("the registry names the digest");
        let by_digest = format!("{}/demo/app@{digest}", self.registry.host);
        (reference, by_digest)
    }

    fn delete_signature(&self, by_digest: &str) {
        let digest = by_digest.rsplit('@').next().unwrap();
        self.runtime.block_on(
            self.registry
                .delete_manifest("demo/app", &signature_tag(digest)),
        );
    }

    /// One push event, sent through the Service as RegistryX's `WEBHOOK_URL` reaches it: the API
    /// server's service proxy picks one ready endpoint, whichever it is. Returns how long after the
    /// receiver's answer the other replica applied it (its `..._from_peers` counter moved).
    fn push_event(&self) -> Duration {
        let counts = |name: &str| -> BTreeMap<String, f64> {
            self.replica_ips()
                .into_iter()
                .map(|ip| {
                    let n = counter(&ip, name);
                    (ip, n)
                })
                .collect()
        };
        let received = counts("registryx_guard_push_events_received");
        let from_peers = counts("registryx_guard_push_events_from_peers");
        let event = r#"{"action":"push","repository":"demo/app","tag":"x","digest":"sha256:00","timestamp":"2026-12-05T00:00:00Z","user":"ci"}"#;
        let path = format!(
            "/api/v1/namespaces/{NAMESPACE}/services/https:rxg-webhook:443/proxy/registryx/events?token={TOKEN}"
        );
        let file = self.work.path().join("event.json");
        std::fs::write(&file, event).unwrap();
        let output =
            self.cluster
                .kubectl(&["create", "--raw", &path, "-f", file.to_str().unwrap()]);
        assert_success("push event through the Service", &output);
        assert!(text(&output).contains("dropped"), "{}", text(&output));
        let accepted = Instant::now();
        let receiver = counts("registryx_guard_push_events_received")
            .into_iter()
            .find(|(ip, n)| received.get(ip).is_some_and(|before| n > before))
            .map(|(ip, _)| ip)
            .expect("one replica received the event");
        loop {
            let applied = counts("registryx_guard_push_events_from_peers")
                .into_iter()
                .any(|(ip, n)| ip != receiver && from_peers.get(&ip).is_some_and(|b| n > *b));
            if applied {
                return accepted.elapsed();
            }
            assert!(
                accepted.elapsed() < Duration::from_secs(5),
                "the event {receiver} received never reached the other replica"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn replica_ips(&self) -> Vec<String> {
        jsonpath(
            &self.cluster,
            &["get", "pods", "-n", NAMESPACE],
            "{.items[*].status.podIP}",
        )
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    /// `kubectl run --dry-run=server`: the API server calls `/mutate`, then `/validate` with the
    /// mutated pod, each on the endpoint it picks.
    fn admit(&self, image: &str) -> Output {
        self.cluster.kubectl(&[
            "run",
            "probe",
            "-n",
            "default",
            "--image",
            image,
            "--restart",
            "Never",
            "--dry-run=server",
        ])
    }

    /// Admissions of `image` until each replica has decided it once (its decision counter moved), so
    /// that both hold it in their caches; for at most a minute (the API server re-dials, and so may
    /// pick the other replica, every `MAX_CONNECTION_AGE`).
    fn prime_both(&self, image: &str, admitted: bool) {
        let before = self.decisions();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let output = self.admit(image);
            assert_eq!(
                output.status.success(),
                admitted,
                "priming {image}: {}",
                text(&output)
            );
            let now = self.decisions();
            if now
                .iter()
                .all(|(ip, n)| before.get(ip).is_some_and(|b| n > b))
            {
                return;
            }
        }
        let ips = self.replica_ips();
        let sample: String = ips
            .first()
            .map(|ip| metrics(ip))
            .unwrap_or_default()
            .chars()
            .take(3000)
            .collect();
        panic!(
            "a minute of admissions of {image} never reached both replicas: before {before:?}, now {:?}\n{sample}",
            self.decisions()
        );
    }

    /// `ADMISSIONS` admissions of each image: how many were admitted, and that both replicas answered.
    fn count_admitted(&self, images: &[&str]) -> usize {
        let before = self.decisions();
        let mut admitted = 0;
        for image in images {
            for _ in 0..ADMISSIONS {
                admitted += usize::from(self.admit(image).status.success());
            }
        }
        let after = self.decisions();
        let answered: Vec<bool> = after
            .iter()
            .map(|(ip, n)| before.get(ip).is_some_and(|b| n > b))
            .collect();
        println!("  both replicas answered: {answered:?}");
        admitted
    }

    /// Validating decisions so far, per replica address.
    fn decisions(&self) -> BTreeMap<String, f64> {
        self.replica_ips()
            .into_iter()
            .map(|ip| {
                let total = metrics(&ip)
                    .lines()
                    .filter(|l| l.starts_with("registryx_guard_admission_decisions_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                (ip, total)
            })
            .collect()
    }
}

/// `/metrics` of the replica at `ip` (the plain probes port), by hand: one GET.
fn metrics(ip: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect((ip, 8080)) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

fn counter(ip: &str, name: &str) -> f64 {
    metrics(ip)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn setup() -> Setup {
    let cluster = ControlPlane::start_for_pods();
    let node = Node::start(&cluster);
    let work = tempfile::tempdir().unwrap();
    load_own_image(&node, work.path());
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    assert_success(
        "events token",
        &cluster.kubectl(&[
            "create",
            "secret",
            "generic",
            "rxg-events",
            "-n",
            NAMESPACE,
            &format!("--from-literal=token={TOKEN}"),
        ]),
    );
    let install = Helm::new(&cluster)
        .set("events.tokenSecret.name=rxg-events")
        .wait()
        .install();
    assert_success(&format!("helm install\n{}", node.logs()), &install);

    let registry = Registry::distribution_at(&node.ip());
    node.allow_plain_http(&registry.host);
    let cosign = Cosign::with_new_key_pair();
    let policy = release_key_policy(
        "demo",
        &format!("{}/demo/**", registry.host),
        &cosign.public_key_pem(),
    );
    assert_success(
        "apply policy",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy.yaml()),
    );
    assert_success(
        "opt in",
        &cluster.kubectl(&["label", "namespace", "default", "registryx.io/include=true"]),
    );
    wait_until(
        "the policy to be Ready",
        Duration::from_secs(30),
        || {
            jsonpath(
                &cluster,
                &["get", "isp", "demo"],
                "{.status.conditions[0].status}",
            ) == "True"
        },
        String::new,
    );
    Setup {
        cluster,
        _node: node,
        registry,
        cosign,
        work,
        runtime: tokio::runtime::Runtime::new().unwrap(),
    }
}

#[test]
fn two_replicas_behind_the_service_share_one_truth() {
    let s = setup();
    assert_eq!(s.replica_ips().len(), 2, "the chart's two replicas");

    // 1. No event: a deleted signature stops admitting within the bound on both replicas.
    let (tag, by_digest) = s.push("silent", true);
    s.prime_both(&tag, true);
    s.prime_both(&by_digest, true);
    s.delete_signature(&by_digest);
    let deleted = Instant::now();
    let mut first_refusal = None;
    while deleted.elapsed() < REVOCATION_BOUND + Duration::from_secs(1) {
        if first_refusal.is_none() && !s.admit(&by_digest).status.success() {
            first_refusal = Some(deleted.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("no event: first refusal {first_refusal:?} after the deletion");
    let admitted = s.count_admitted(&[&tag, &by_digest]);
    println!(
        "no event: {admitted} of {} admitted after the bound",
        2 * ADMISSIONS
    );
    assert_eq!(
        admitted, 0,
        "admitted {REVOCATION_BOUND:?} after its signature was deleted"
    );

    // 2. SIGKILL of a replica during a stream of admissions: counted, and the stream recovers.
    let (signed, _) = s.push("steady", true);
    for kill in 0..3 {
        wait_until(
            "two replicas Ready",
            Duration::from_secs(90),
            || {
                jsonpath(
                    &s.cluster,
                    &["get", "deployment", "rxg", "-n", NAMESPACE],
                    "{.status.readyReplicas}",
                ) == "2"
            },
            || text(&s.cluster.kubectl(&["get", "pods", "-n", NAMESPACE])),
        );
        let stream = Stream::start(&s.cluster, &signed);
        std::thread::sleep(Duration::from_secs(2));
        let pids = replica_pids();
        assert_eq!(
            pids.len(),
            2,
            "two registryx-guard processes on the node: {pids:?}"
        );
        let killed = std::process::Command::new("kill")
            .args(["-9", &pids[kill % 2].to_string()])
            .output()
            .unwrap();
        assert_success("kill -9", &killed);
        std::thread::sleep(Duration::from_secs(10));
        let (attempts, failures, first) = stream.stop();
        println!(
            "kill -9 #{kill}: {attempts} admissions, {failures} failed; first failure: {first:?}"
        );
        let recovered = (0..10).all(|_| s.admit(&signed).status.success());
        assert!(
            recovered,
            "admissions still fail 10 s after a replica was killed"
        );
    }
    // 3. Sign + one push event: both replicas held a refusal; none of the next admissions is refused,
    // whichever replica mutates and whichever validates.
    for round in 0..3 {
        let (tag, by_digest) = s.push(&format!("late-{round}"), false);
        s.prime_both(&tag, false);
        s.cosign.sign(&tag, Format::Legacy);
        let reached = s.push_event();
        let admitted = s.count_admitted(&[&tag, &by_digest]);
        println!(
            "round {round}: signed + one event (the other replica had it {reached:?} later) -> \
             {admitted} of {} admitted",
            2 * ADMISSIONS
        );
        assert_eq!(
            admitted,
            2 * ADMISSIONS,
            "a signed image refused after the event"
        );
    }

    // 4. Delete the signature + one push event: both replicas held a verified result; none of the
    // next admissions is admitted, by tag or by digest.
    for round in 0..3 {
        let (tag, by_digest) = s.push(&format!("revoked-{round}"), true);
        s.prime_both(&tag, true);
        s.prime_both(&by_digest, true);
        s.delete_signature(&by_digest);
        let reached = s.push_event();
        let admitted = s.count_admitted(&[&tag, &by_digest]);
        println!(
            "round {round}: signature deleted + one event (the other replica had it {reached:?} \
             later) -> {admitted} of {} admitted",
            2 * ADMISSIONS
        );
        assert_eq!(admitted, 0, "a de-signed image admitted after the event");
    }
    let shared: Vec<f64> = s
        .replica_ips()
        .iter()
        .map(|ip| counter(ip, "registryx_guard_push_events_from_peers"))
        .collect();
    println!("push-event batches applied from the other replica: {shared:?}");
}

/// The host PIDs of the webhook's processes (the node's containers run on this machine).
fn replica_pids() -> Vec<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-x", "registryx-guard"])
        .output()
        .unwrap();
    let mut pids: Vec<u32> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                String::from_utf8_lossy(&environ).contains("RXG_POD_NAME=rxg-")
            })
        })
        .collect();
    pids.sort();
    pids
}
