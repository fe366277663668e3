//! `registryx-guard verify --cluster` against a real kube-apiserver: the policies, the Secret holding
//! the key, and the namespace's labels come from the current kube context, read-only, and the answer is
//! the webhook's decision in its words, before any `kubectl apply`.

use std::process::{Command, Output};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use registryx_guard::policy::{KeyAuthority, SecretKeyRef};

fn verify(cluster: &ControlPlane, args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .args(["verify", "--cluster"])
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("RXG_POLICY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

#[tokio::test]
async fn verify_cluster_decides_with_the_clusters_policies_secrets_and_labels() {
    let cluster = ControlPlane::start();
    cluster.install_crd();
    for namespace in ["registryx-guard", "team", "dev"] {
        assert_success(
            "namespace",
            &cluster.kubectl(&["create", "namespace", namespace]),
        );
    }
    assert_success(
        "label team",
        &cluster.kubectl(&[
            "label",
            "namespace",
            "team",
            "env=prod",
            "registryx.io/include=true",
        ]),
    );

    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry.push_image("team/app", "signed", "vc-signed").await;
    cosign.sign(&signed.reference, Format::Legacy);
    let unsigned = registry
        .push_image("team/app", "unsigned", "vc-unsigned")
        .await;

    // The key lives in a Secret of registryx-guard's namespace, as in production; the policy takes
    // only namespaces labelled env=prod.
    assert_success(
        "secret",
        &cluster.kubectl(&[
            "create",
            "secret",
            "generic",
            "release-key",
            "-n",
            "registryx-guard",
            &format!("--from-file=cosign.pub={}", cosign.public_key().display()),
        ]),
    );
    let policy = PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .named("team-signed")
        .authority_named("release-key")
        .with(|spec| {
            spec.authorities[0].key = Some(KeyAuthority {
                data: None,
                secret_ref: Some(SecretKeyRef {
                    name: "release-key".into(),
                    namespace: None,
                    key: None,
                }),
            });
            spec.namespace_selector = Some(
                serde_json::from_value(serde_json::json!({"matchLabels": {"env": "prod"}}))
                    .unwrap(),
            );
        });
    assert_success(
        "apply policy",
        &cluster.kubectl_with_stdin(&["apply", "-f", "-"], &policy.yaml()),
    );

    let (output, text) = verify(&cluster, &["--namespace", "team", &signed.reference]);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("policy team-signed: passed"), "{text}");

    let (output, text) = verify(&cluster, &["--namespace", "team", &unsigned.reference]);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no signature found") && text.contains("cosign sign --key"),
        "{text}"
    );

    // In a namespace the policy does not select, nothing governs the image: refused as the webhook
    // refuses it (--unmatched deny), and the namespace not being opted in is said.
    let (output, text) = verify(&cluster, &["--namespace", "dev", &signed.reference]);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is governed by no ImageSigningPolicy"),
        "{text}"
    );
    assert!(
        text.contains("not labelled registryx.io/include=true"),
        "{text}"
    );

    // The Secret gone: the policy is not usable, and says why, as its status would.
    assert_success(
        "delete secret",
        &cluster.kubectl(&["delete", "secret", "release-key", "-n", "registryx-guard"]),
    );
    let (output, text) = verify(&cluster, &["--namespace", "team", &signed.reference]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("Secret registryx-guard/release-key not found"),
        "{text}"
    );
}
