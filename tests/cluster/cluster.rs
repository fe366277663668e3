//! registryx-guard where users run it: its own image, built here without a Docker engine, installed by
//! `helm install` with the chart's defaults into a cluster whose node really runs pods (containerd, runc,
//! kubelet, scheduler, controller-manager: `e2e/node.sh`). Two replicas Ready through their probes, with
//! the chart's RBAC; policies applied with kubectl; a Deployment of a signed image whose pods run, an
//! unsigned one refused with the reason; the webhook's own image verified by its own policy; no failed
//! admission while a replica is deleted, and the status Lease moving to the survivor.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::helm::{Helm, NAMESPACE};
use crate::support::node::Node;
use crate::support::policy::release_key_policy;
use crate::support::registry::Registry;

use super::pods::{
    Stream, build_own_image, crane_push, jsonpath, load_own_image, pause_image, text, wait_until,
};

fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  replicas: 1\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      \
         containers: [{{name: app, image: '{image}', imagePullPolicy: IfNotPresent}}]\n"
    )
}

#[test]
fn helm_install_into_a_cluster_that_runs_pods() {
    let cluster = ControlPlane::start_for_pods();
    let node = Node::start(&cluster);
    let work = tempfile::tempdir().unwrap();

    // 1. The image, built without a Docker engine, loaded into the node under the chart's default name.
    let image_dir = load_own_image(&node, work.path());
    let once = build_own_image(&work.path().join("image-once"));
    let again = build_own_image(&work.path().join("image-again"));
    assert_eq!(
        String::from_utf8_lossy(&once.stdout),
        String::from_utf8_lossy(&again.stdout),
        "two builds of one binary gave two digests"
    );

    // 2. helm install with the chart's defaults: two replicas Ready through their probes, with the
    // chart's own ServiceAccount and RBAC talking to the API server from inside the cluster.
    let installed_at = Instant::now();
    let install = Helm::new(&cluster).wait().install();
    assert_success(
        &format!(
            "helm install\n{}\n{}",
            text(&cluster.kubectl(&["get", "pods,events", "-A"])),
            node.logs()
        ),
        &install,
    );
    let ready = jsonpath(
        &cluster,
        &["get", "deployment", "rxg", "-n", NAMESPACE],
        "{.status.readyReplicas}",
    );
    assert_eq!(ready, "2", "two replicas Ready");
    println!(
        "helm install -> 2 replicas Ready: {:?}",
        installed_at.elapsed()
    );

    // 3. A registry with a signed and an unsigned image that really run (the static pause binary).
    let registry = Registry::distribution_at(&node.ip());
    node.allow_plain_http(&registry.host);
    let cosign = Cosign::with_new_key_pair();
    let signed = format!("{}/demo/app:signed", registry.host);
    let unsigned = format!("{}/demo/app:unsigned", registry.host);
    crane_push(&pause_image(work.path(), "signed"), &signed);
    crane_push(&pause_image(work.path(), "unsigned"), &unsigned);
    cosign.sign(&signed, Format::Legacy);

    // 4. Policies with kubectl, a namespace that opts in.
    let pem = cosign.public_key_pem();
    assert_success(
        "apply policy",
        &cluster.kubectl_with_stdin(
            &["apply", "-f", "-"],
            &release_key_policy("demo", &format!("{}/demo/**", registry.host), &pem).yaml(),
        ),
    );
    assert_success(
        "opt in",
        &cluster.kubectl(&["label", "namespace", "default", "registryx.io/include=true"]),
    );
    let status = || {
        jsonpath(
            &cluster,
            &["get", "isp", "demo"],
            "{.status.conditions[0].status}",
        )
    };
    wait_until(
        "the policy to be Ready (status written from inside the cluster)",
        Duration::from_secs(30),
        || status() == "True",
        || {
            text(&cluster.kubectl(&[
                "logs",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/name=registryx-guard",
                "--tail",
                "20",
            ]))
        },
    );

    // 5. The signed Deployment runs, pinned to the digest that was verified; the unsigned one is refused.
    assert_success(
        "signed deployment",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &deployment("signed", &signed)),
    );
    let running = || {
        jsonpath(
            &cluster,
            &["get", "pods", "-n", "default", "-l", "app=signed"],
            "{.items[*].status.phase}",
        )
    };
    wait_until(
        "the signed pod to run",
        Duration::from_secs(90),
        || running() == "Running",
        || {
            format!(
                "{}\n{}",
                text(&cluster.kubectl(&["describe", "pods", "-n", "default", "-l", "app=signed"])),
                node.logs()
            )
        },
    );
    let pod_image = jsonpath(
        &cluster,
        &["get", "pods", "-n", "default", "-l", "app=signed"],
        "{.items[0].spec.containers[0].image}",
    );
    assert!(
        pod_image.starts_with(&format!("{signed}@sha256:")),
        "{pod_image}"
    );
    let refused =
        cluster.kubectl_with_stdin(&["apply", "-f", "-"], &deployment("unsigned", &unsigned));
    assert!(
        !refused.status.success()
            && text(&refused).contains("no signature found")
            && text(&refused).contains("policy demo"),
        "{}",
        text(&refused)
    );

    // 6. The webhook's own image, pushed and signed, is governed by a policy: it verifies itself.
    let own = format!("{}/registryx-guard/registryx-guard:e2e", registry.host);
    crane_push(&image_dir.join("oci"), &own);
    cosign.sign(&own, Format::Legacy);
    assert_success(
        "apply own policy",
        &cluster.kubectl_with_stdin(
            &["apply", "-f", "-"],
            &release_key_policy(
                "self",
                &format!("{}/registryx-guard/**", registry.host),
                &pem,
            )
            .yaml(),
        ),
    );
    wait_until(
        "the self policy to be Ready",
        Duration::from_secs(30),
        || {
            jsonpath(
                &cluster,
                &["get", "isp", "self"],
                "{.status.conditions[0].status}",
            ) == "True"
        },
        String::new,
    );
    let itself = cluster.kubectl(&[
        "run",
        "itself",
        "-n",
        "default",
        "--image",
        &own,
        "--restart",
        "Never",
        "--dry-run=server",
        "--",
        "--version",
    ]);
    assert_success("the webhook admits its own signed image", &itself);

    // 7. Availability: a stream of admissions while a replica is deleted: none fails, and the status
    // Lease moves to the survivor, which keeps writing policy status.
    let holder = || {
        jsonpath(
            &cluster,
            &[
                "get",
                "lease",
                "registryx-guard-status-writer",
                "-n",
                NAMESPACE,
            ],
            "{.spec.holderIdentity}",
        )
    };
    let first_holder = holder();
    assert!(
        first_holder.starts_with("rxg-"),
        "lease holder {first_holder:?}"
    );
    let stream = Stream::start(&cluster, &signed);
    std::thread::sleep(Duration::from_secs(2));
    assert_success(
        "delete the lease holder",
        &cluster.kubectl(&[
            "delete",
            "pod",
            "-n",
            NAMESPACE,
            &first_holder,
            "--wait=false",
        ]),
    );
    let moved = wait_until(
        "the Lease to move to the survivor",
        Duration::from_secs(60),
        || {
            let now = holder();
            !now.is_empty() && now != first_holder
        },
        || text(&cluster.kubectl(&["get", "pods,lease", "-n", NAMESPACE])),
    );
    println!("lease moved in {moved:?}");
    wait_until(
        "two replicas Ready again",
        Duration::from_secs(90),
        || {
            jsonpath(
                &cluster,
                &["get", "deployment", "rxg", "-n", NAMESPACE],
                "{.status.readyReplicas}",
            ) == "2"
        },
        || text(&cluster.kubectl(&["get", "pods", "-n", NAMESPACE])),
    );
    std::thread::sleep(Duration::from_secs(2));
    stream.finish("a replica was deleted");
    // The survivor writes status: a new policy becomes Ready.
    assert_success(
        "apply after the move",
        &cluster.kubectl_with_stdin(
            &["apply", "-f", "-"],
            &release_key_policy("after-move", &format!("{}/after/**", registry.host), &pem).yaml(),
        ),
    );
    wait_until(
        "status written by the new holder",
        Duration::from_secs(30),
        || {
            jsonpath(
                &cluster,
                &["get", "isp", "after-move"],
                "{.status.conditions[0].status}",
            ) == "True"
        },
        holder,
    );

    // 8. A rolling `helm upgrade` (new pods first, old ones drained): no admission fails.
    let stream = Stream::start(&cluster, &signed);
    std::thread::sleep(Duration::from_secs(1));
    helm_upgrade(&cluster, "podAnnotations.rollout=second");
    wait_until(
        "the old replicas to be gone",
        Duration::from_secs(60),
        || {
            jsonpath(
                &cluster,
                &["get", "pods", "-n", NAMESPACE],
                "{.items[*].metadata.name}",
            )
            .split_whitespace()
            .count()
                == 2
        },
        || text(&cluster.kubectl(&["get", "pods", "-n", NAMESPACE])),
    );
    stream.finish("a rolling helm upgrade ran");

    // 9. Certificate rotation in the cluster: a new CA and serving certificate replace the Secret (the
    // chart keeps no CA key), the webhooks trust the new CA and the previous one; every replica serves
    // the new certificate within seconds, and no admission fails meanwhile.
    let secret_cert = || {
        jsonpath(
            &cluster,
            &["get", "secret", "rxg-tls", "-n", NAMESPACE],
            "{.data.tls\\.crt}",
        )
    };
    let before = secret_cert();
    let stream = Stream::start(&cluster, &signed);
    std::thread::sleep(Duration::from_secs(1));
    helm_upgrade(&cluster, "tls.rotation=2");
    let after = secret_cert();
    assert_ne!(before, after, "the Secret holds the same certificate");
    let served_everywhere = || {
        let ips = jsonpath(
            &cluster,
            &["get", "pods", "-n", NAMESPACE],
            "{.items[*].status.podIP}",
        );
        let expected = pem_of_base64(&after);
        !ips.is_empty()
            && ips
                .split_whitespace()
                .all(|ip| served_certificate(ip) == expected)
    };
    let took = wait_until(
        "every replica to serve the new certificate",
        Duration::from_secs(120),
        served_everywhere,
        || {
            text(&cluster.kubectl(&[
                "logs",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/name=registryx-guard",
                "--tail",
                "5",
            ]))
        },
    );
    println!("rotated certificate served by every replica {took:?} after helm upgrade returned");
    std::thread::sleep(Duration::from_secs(2));
    stream.finish("the serving certificate was rotated");
    drop(node);
}

/// `helm upgrade --reuse-values --set-string VALUE --wait`, as an operator runs it.
fn helm_upgrade(cluster: &ControlPlane, value: &str) {
    let output = Helm::new(cluster).set_string(value).wait().upgrade();
    assert_success(&format!("helm upgrade --set-string {value}"), &output);
}

fn pem_of_base64(data: &str) -> String {
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .unwrap_or_default();
    first_certificate(&String::from_utf8_lossy(&pem))
}

fn first_certificate(pem: &str) -> String {
    let begin = pem.find("-----BEGIN CERTIFICATE-----");
    let end = pem
        .find("-----END CERTIFICATE-----")
        .map(|i| i + "-----END CERTIFICATE-----".len());
    match (begin, end) {
        (Some(b), Some(e)) if b < e => pem[b..e].to_owned(),
        _ => String::new(),
    }
}

/// The certificate a webhook pod serves on its port, read with `openssl s_client` from this machine.
fn served_certificate(ip: &str) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{ip}:8443"), "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    first_certificate(&String::from_utf8_lossy(&output.stdout))
}
