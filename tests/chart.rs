//! The chart's rendered manifests against a real API server (server-side dry run): every object, CRD
//! included, is accepted as it would be by `helm install`.

mod support;

use std::process::Command;

use support::cluster::ControlPlane;
use support::cosign::assert_success;

fn render(values: &[&str]) -> String {
    let mut command = Command::new(support::tool("helm"));
    command
        .args(["template", "rxg"])
        .arg(support::repo_root().join("charts/registryx-guard"));
    command.args(["--namespace", "registryx-guard", "--include-crds"]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert_success("helm template", &output);
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn rendered_manifests_pass_a_server_side_dry_run() {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", "registryx-guard"]),
    );
    for values in [
        &[][..],
        &[
            "webhook.url=https://127.0.0.1:8443",
            "webhook.mutating=false",
            "config.defaultDeny=true",
        ][..],
    ] {
        let manifests = render(values);
        for kind in [
            "CustomResourceDefinition",
            "ClusterRole",
            "Role",
            "Deployment",
            "ValidatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Secret",
        ] {
            assert!(
                manifests.contains(&format!("kind: {kind}\n")),
                "no {kind} rendered with {values:?}"
            );
        }
        let output =
            cluster.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifests);
        assert_success(&format!("server-side dry run with {values:?}"), &output);
    }
}

#[test]
fn the_webhook_can_never_lock_the_cluster_out() {
    let manifests = render(&[]);
    let webhooks = manifests
        .split("---")
        .filter(|doc| doc.contains("WebhookConfiguration"))
        .collect::<Vec<_>>();
    assert_eq!(webhooks.len(), 2, "validating and mutating");
    for webhook in webhooks {
        assert!(
            webhook.contains(r#"values: ["registryx-guard","kube-system"]"#),
            "{webhook}"
        );
        assert!(webhook.contains("sideEffects: None"));
    }
    assert!(
        manifests.contains("failurePolicy: Fail"),
        "validation must fail closed by default"
    );
    // Least privilege: Secrets are readable only through the namespaced Role.
    let cluster_role = manifests
        .split("---")
        .find(|d| d.contains("kind: ClusterRole\n"))
        .unwrap();
    assert!(!cluster_role.contains("secrets"), "{cluster_role}");
}
