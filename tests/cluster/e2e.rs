//! The whole product as a user meets it, on this machine alone: etcd + kube-apiserver, a registry with
//! one signed and one unsigned image, the chart installed by helm (CRDs, RBAC, webhook configurations
//! pointing at a registryx-guard process outside the cluster), policies applied with kubectl, and
//! kubectl's own answers checked.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::helm::{NAMESPACE, helm_install};
use crate::support::policy::release_key_policy;
use crate::support::process::{Process, http_status};
use crate::support::registry::Registry;
use base64::Engine as _;
use registryx_guard::policy::Mode;

pub(crate) struct Webhook {
    process: Option<Process>,
    port: u16,
    probes: u16,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Webhook {
    pub(crate) fn start(cluster: &ControlPlane, port: u16) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        for (key, file) in [("tls\\.crt", "tls.crt"), ("tls\\.key", "tls.key")] {
            let output = cluster.kubectl(&[
                "get",
                "secret",
                "rxg-tls",
                "-n",
                NAMESPACE,
                "-o",
                &format!("jsonpath={{.data.{key}}}"),
            ]);
            assert_success("read the chart's TLS secret", &output);
            let pem = base64::engine::general_purpose::STANDARD
                .decode(output.stdout.trim_ascii())
                .unwrap();
            std::fs::write(dir.path().join(file), pem).unwrap();
        }
        let mut webhook = Webhook {
            process: None,
            port,
            probes: crate::support::free_port(),
            dir,
            kubeconfig: cluster.kubeconfig.clone(),
        };
        webhook.restart();
        webhook
    }

    fn restart(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_registryx-guard"));
        command
            .args([
                "serve",
                "--namespace",
                NAMESPACE,
                "--identity",
                "e2e-replica",
            ])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--probes-listen", &format!("127.0.0.1:{}", self.probes)])
            .arg("--tls-cert")
            .arg(self.dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(self.dir.path().join("tls.key"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RXG_LOG", "info");
        let mut process = Process::start("registryx-guard", command, self.dir.path());
        let ready = format!("http://127.0.0.1:{}/readyz", self.probes);
        process.wait_until("ready", Duration::from_secs(30), || {
            http_status(&ready) == Some(200)
        });
        self.process = Some(process);
    }

    fn stop(&mut self) {
        self.process = None;
    }

    pub(crate) fn log(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }
}

fn kubectl_stdin(cluster: &ControlPlane, args: &[&str], stdin: &str) -> Output {
    cluster.kubectl_with_stdin(args, stdin)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) async fn wait_ready(cluster: &ControlPlane, name: &str, webhook: &Webhook) {
    let start = Instant::now();
    while text(&cluster.kubectl(&["get", "isp", name]))
        .lines()
        .nth(1)
        .is_none_or(|l| !l.contains("True"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never Ready: {}",
            webhook.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_pod(cluster: &ControlPlane, name: &str, image: &str) -> Output {
    cluster.kubectl(&[
        "run",
        name,
        "--image",
        image,
        "--restart",
        "Never",
        "-n",
        "default",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_end_to_end() {
    let cluster = ControlPlane::start();
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("demo/app", "signed", "e2e-signed")
        .await;
    let unsigned = registry
        .push_image("demo/app", "unsigned", "e2e-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);

    // 1. helm install: CRDs, RBAC, webhook configurations pointing at the process below.
    let port = crate::support::free_port();
    let install = helm_install(
        &cluster,
        &[
            &format!("webhook.url=https://127.0.0.1:{port}"),
            "replicaCount=0",
        ],
    );
    assert!(
        String::from_utf8_lossy(&install.stdout).contains("kubectl apply -f policies/"),
        "NOTES.txt is not shown"
    );
    let mut webhook = Webhook::start(&cluster, port);
    // Namespaces opt in, as the chart's default namespaceSelector asks.
    assert_success(
        "opt the namespace in",
        &cluster.kubectl(&["label", "namespace", "default", "registryx.io/include=true"]),
    );

    // 2. A policy: the signed image runs, the unsigned one is refused with the reason (the shipped
    // files of policies/, unedited, are examples.rs's).
    let glob = format!("{}/demo/**", registry.host);
    let applied = kubectl_stdin(
        &cluster,
        &["apply", "-f", "-"],
        &release_key_policy("demo-signed", &glob, &cosign.public_key_pem()).yaml(),
    );
    assert_success("apply policy", &applied);
    let ready = Instant::now();
    while text(&cluster.kubectl(&["get", "isp", "demo-signed"]))
        .lines()
        .nth(1)
        .is_none_or(|l| !l.contains("True"))
    {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "policy never Ready: {}",
            webhook.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted = run_pod(&cluster, "signed", &signed.reference);
    assert!(
        admitted.status.success(),
        "signed image refused: {}\n{}",
        text(&admitted),
        webhook.log()
    );
    let refused = run_pod(&cluster, "unsigned", &unsigned.reference);
    assert!(!refused.status.success(), "unsigned image admitted");
    let message = text(&refused);
    for needle in [
        "denied the request",
        unsigned.digest.as_str(),
        "policy demo-signed",
        "no signature found",
        "cosign sign --key",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from kubectl's answer:\n{message}"
        );
    }
    // The refusal is also a Warning event on the policy, its reason the typed one.
    let events = || {
        text(&cluster.kubectl(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.name=demo-signed,reason=NoSignature,type=Warning",
            "-o",
            "jsonpath={.items[*].message}",
        ]))
    };
    let waited = Instant::now();
    while !(events().contains("Pod default/unsigned")
        && events().contains(unsigned.digest.as_str()))
    {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no refusal event on the policy: {:?}\n{}",
            events(),
            webhook.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2b. No side doors. Another spelling of the registry is the same registry: the unsigned image is
    // refused as unsigned, the signed one admitted and stored pinned to the digest that was verified.
    let respell = |image: &str| image.replacen("127.0.0.1:", "127.0.0.1:0", 1);
    let refused = run_pod(
        &cluster,
        "respelled-unsigned",
        &respell(&unsigned.reference),
    );
    assert!(
        !refused.status.success() && text(&refused).contains("no signature found"),
        "{}",
        text(&refused)
    );
    assert_success(
        "respelled signed",
        &run_pod(&cluster, "respelled-signed", &respell(&signed.reference)),
    );
    let stored = cluster.kubectl(&[
        "get",
        "pod",
        "respelled-signed",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.containers[0].image}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout),
        format!("{}@{}", respell(&signed.reference), signed.digest),
        "admitted tags are pinned by default"
    );
    // An image that no policy vouches for is refused in a namespace that opted in...
    let unmatched = run_pod(&cluster, "unmatched", "docker.io/library/busybox:1.36");
    assert!(
        !unmatched.status.success()
            && text(&unmatched).contains("governed by no ImageSigningPolicy"),
        "{}",
        text(&unmatched)
    );
    // ...and a namespace that did not opt in is not checked at all.
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", "unchecked"]),
    );
    assert_success(
        "a pod where registryx-guard is not in charge",
        &cluster.kubectl(&[
            "run",
            "free",
            "--image",
            &unsigned.reference,
            "--restart",
            "Never",
            "-n",
            "unchecked",
        ]),
    );
    // A metadata-only update of an admitted pod is admitted without a new check.
    assert_success(
        "label a pod",
        &cluster.kubectl(&[
            "label",
            "pod",
            "respelled-signed",
            "-n",
            "default",
            "tier=web",
        ]),
    );

    // 3. A Deployment with the unsigned image is refused at apply time, not when its pods fail.
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  \
         template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: '{}'}}]\n",
        unsigned.reference
    );
    let refused = kubectl_stdin(&cluster, &["apply", "-f", "-"], &deployment);
    assert!(
        !refused.status.success() && text(&refused).contains("no signature found"),
        "{}",
        text(&refused)
    );

    // 4. Warn mode admits, and kubectl prints the warning.
    let warn_image = registry.push_image("warn/app", "v1", "e2e-warn").await;
    let warn = release_key_policy(
        "warn-only",
        &format!("{}/warn/**", registry.host),
        &cosign.public_key_pem(),
    )
    .mode(Mode::Warn)
    .yaml();
    assert_success(
        "apply warn policy",
        &kubectl_stdin(&cluster, &["apply", "-f", "-"], &warn),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warned = run_pod(&cluster, "warned", &warn_image.reference);
    assert!(warned.status.success(), "{}", text(&warned));
    assert!(
        text(&warned).contains("Warning:") && text(&warned).contains("warn mode"),
        "{}",
        text(&warned)
    );

    // 5. mutateDigest pins the verified digest in the stored object.
    let pinned_image = registry.push_image("pinned/app", "v1", "e2e-pinned").await;
    cosign.sign(&pinned_image.reference, Format::Legacy);
    let pin = release_key_policy(
        "pin",
        &format!("{}/pinned/**", registry.host),
        &cosign.public_key_pem(),
    )
    .mutate_digest(true)
    .yaml();
    assert_success(
        "apply pin policy",
        &kubectl_stdin(&cluster, &["apply", "-f", "-"], &pin),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_success(
        "run pinned",
        &run_pod(&cluster, "pinned", &pinned_image.reference),
    );
    let stored = cluster.kubectl(&[
        "get",
        "pod",
        "pinned",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.containers[0].image}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout),
        format!("{}@{}", pinned_image.reference, pinned_image.digest),
        "{}",
        cluster
            .apiserver_log()
            .lines()
            .filter(|l| l.contains("mutate"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // 6. A policy change takes effect at once: trust another key, and the signed image is refused.
    let other = Cosign::with_new_key_pair();
    let changed_at = Instant::now();
    assert_success(
        "change policy",
        &kubectl_stdin(
            &cluster,
            &["apply", "-f", "-"],
            &release_key_policy("demo-signed", &glob, &other.public_key_pem()).yaml(),
        ),
    );
    let mut attempt = 0;
    let took = loop {
        attempt += 1;
        let output = cluster.kubectl(&[
            "run",
            &format!("after-change-{attempt}"),
            "--image",
            &signed.reference,
            "--restart",
            "Never",
            "--dry-run=server",
        ]);
        if !output.status.success() {
            break changed_at.elapsed();
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(10),
            "the policy change never took effect"
        );
    };
    println!("policy change -> first admission that obeys it: {took:?}");

    // 7. A broken policy: Ready=False in kubectl get isp, and its images refused with the reason.
    let broken = release_key_policy(
        "demo-signed",
        &glob,
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----",
    )
    .yaml();
    assert_success(
        "break policy",
        &kubectl_stdin(&cluster, &["apply", "-f", "-"], &broken),
    );
    let start = Instant::now();
    loop {
        let listing = text(&cluster.kubectl(&["get", "isp", "demo-signed"]));
        if listing.lines().nth(1).is_some_and(|l| l.contains("False")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never Ready=False:\n{listing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = run_pod(&cluster, "while-broken", &signed.reference);
    assert!(
        !refused.status.success() && text(&refused).contains("policy demo-signed is not ready"),
        "{}",
        text(&refused)
    );

    // 8. The webhook down: failurePolicy Fail refuses; back up: admitted again.
    assert_success(
        "restore policy",
        &kubectl_stdin(
            &cluster,
            &["apply", "-f", "-"],
            &release_key_policy("demo-signed", &glob, &cosign.public_key_pem()).yaml(),
        ),
    );
    webhook.stop();
    let refused = run_pod(&cluster, "while-down", &signed.reference);
    assert!(
        !refused.status.success() && text(&refused).contains("failed calling webhook"),
        "{}",
        text(&refused)
    );
    webhook.restart();
    let start = Instant::now();
    loop {
        let output = cluster.kubectl(&[
            "run",
            "after-restart",
            "--image",
            &signed.reference,
            "--restart",
            "Never",
            "--dry-run=server",
        ]);
        if output.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not admitted after restart: {}",
            text(&output)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
