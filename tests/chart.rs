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
            "config.unmatched=allow",
            "webhook.namespaces=all",
            "networkPolicy.webhookFromCIDRs={10.0.0.10/32,10.0.0.11/32}",
            "networkPolicy.webhookFrom[0].podSelector.matchLabels.app=registryx",
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
            "NetworkPolicy",
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

#[test]
fn namespaces_opt_in_by_label_by_default_and_unmatched_images_are_refused() {
    let webhooks = |values: &[&str]| -> Vec<String> {
        render(values)
            .split("---")
            .filter(|doc| doc.contains("WebhookConfiguration"))
            .map(str::to_owned)
            .collect()
    };
    let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for webhook in webhooks(&[]) {
        assert!(
            flat(&webhook).contains("- key: registryx.io/include operator: In values: [\"true\"]"),
            "opt-in by label by default: {webhook}"
        );
    }
    for webhook in webhooks(&["webhook.namespaces=all"]) {
        assert!(!webhook.contains("registryx.io/include"), "{webhook}");
        assert!(
            webhook.contains("operator: NotIn"),
            "exclusions stay: {webhook}"
        );
    }
    let manifests = render(&[]);
    assert!(
        manifests.contains("{name: RXG_UNMATCHED, value: \"deny\"}"),
        "unmatched images are refused by default"
    );
    let output = Command::new(support::tool("helm"))
        .args(["template", "rxg"])
        .arg(support::repo_root().join("charts/registryx-guard"))
        .args(["--set", "webhook.namespaces=some"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("optIn or all"));
}

#[test]
fn the_network_policy_can_be_narrowed_to_the_control_planes_addresses() {
    let policy = |values: &[&str]| -> String {
        let manifests = render(values);
        let doc = manifests
            .split("---")
            .find(|doc| doc.contains("kind: NetworkPolicy\n"))
            .unwrap_or_else(|| panic!("no NetworkPolicy rendered with {values:?}"))
            .to_owned();
        // Comments out, whitespace folded: the rules as one line.
        doc.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // By default the webhook port is open to any source (the API server's address is the cluster's),
    // and the probes port to none.
    let open = policy(&[]);
    assert!(
        open.ends_with("ingress: - ports: [{port: https, protocol: TCP}]"),
        "{open}"
    );
    // Narrowed: the control plane's CIDRs, then any further peers (RegistryX's pods for push events).
    let narrowed = policy(&[
        "networkPolicy.webhookFromCIDRs={10.0.0.10/32,10.0.0.11/32}",
        "networkPolicy.webhookFrom[0].podSelector.matchLabels.app=registryx",
    ]);
    assert!(
        narrowed.ends_with(
            "ingress: - ports: [{port: https, protocol: TCP}] from: - ipBlock: cidr: 10.0.0.10/32 \
             - ipBlock: cidr: 10.0.0.11/32 - podSelector: matchLabels: app: registryx"
        ),
        "{narrowed}"
    );
    // A CIDR alone narrows it too, and the probes port keeps its own rule.
    let cidr_only = policy(&[
        "networkPolicy.webhookFromCIDRs={192.168.0.2/32}",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
    ]);
    assert!(
        cidr_only.contains(
            "- ports: [{port: https, protocol: TCP}] from: - ipBlock: cidr: 192.168.0.2/32 \
             - ports: [{port: probes, protocol: TCP}] from: - namespaceSelector:"
        ),
        "{cidr_only}"
    );
}
