//! The chart's rendered manifests against a real API server (server-side dry run): every object, CRD
//! included, is accepted as it would be by `helm install`; what the webhook's pods and ServiceAccount
//! can read; and the generated certificate through real `helm install` and `helm upgrade`s.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::assert_success;
use crate::support::helm::{Helm, NAMESPACE, documents, helm_template, helm_upgrade};

fn render(values: &[&str]) -> String {
    let output = helm_template(values);
    assert_success("helm template", &output);
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn rendered_manifests_pass_a_server_side_dry_run() {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    for values in [
        &[][..],
        &[
            "webhook.url=https://127.0.0.1:8443",
            "webhook.mutating=false",
            "config.unmatched=allow",
            "webhook.namespaces=all",
            "audit.namespaces=all",
            "audit.intervalSeconds=60",
            "networkPolicy.webhookFromCIDRs={10.0.0.10/32,10.0.0.11/32}",
            "networkPolicy.webhookFrom[0].podSelector.matchLabels.app=registryx",
        ][..],
    ] {
        let manifests = render(values);
        for kind in [
            "CustomResourceDefinition",
            "ClusterRole",
            "Role",
            "ConfigMap",
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

/// The audit (on by default) lists and watches pods and the six workload kinds cluster-wide and writes
/// none of them; its flags follow the webhook's namespace choice; `audit.enabled=false` takes both the
/// flags' effect and the permissions away.
#[test]
fn the_audit_reads_what_runs_and_writes_none_of_it() {
    let runs = |docs: &[Value]| -> Vec<Value> {
        let cluster_role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
        cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| {
                let resources = rule["resources"].to_string();
                [
                    "pods",
                    "deployments",
                    "replicasets",
                    "statefulsets",
                    "daemonsets",
                    "jobs",
                    "cronjobs",
                ]
                .iter()
                .any(|kind| resources.contains(&format!("\"{kind}\"")))
            })
            .cloned()
            .collect()
    };
    let env = |docs: &[Value], name: &str| -> Option<String> {
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    };
    let docs = documents(&render(&[]));
    let rules = runs(&docs);
    assert_eq!(rules.len(), 3, "{rules:#?}");
    for rule in &rules {
        assert_eq!(
            rule["verbs"],
            serde_json::json!(["list", "watch"]),
            "{rule}"
        );
    }
    assert_eq!(env(&docs, "RXG_AUDIT").as_deref(), Some("true"));
    assert_eq!(env(&docs, "RXG_AUDIT_NAMESPACES").as_deref(), Some("optIn"));
    assert_eq!(
        env(&docs, "RXG_AUDIT_EXCLUDED_NAMESPACES").as_deref(),
        Some("registryx-guard,kube-system")
    );
    // A webhook over every namespace governs what optIn would leave out: the audit follows it.
    let docs = documents(&render(&["webhook.namespaces=all"]));
    assert_eq!(env(&docs, "RXG_AUDIT_NAMESPACES").as_deref(), Some("all"));
    let docs = documents(&render(&["audit.enabled=false"]));
    assert!(runs(&docs).is_empty());
    assert_eq!(env(&docs, "RXG_AUDIT").as_deref(), Some("false"));
    assert_eq!(env(&docs, "RXG_AUDIT_NAMESPACES"), None);
    let refused = helm_template(&["audit.namespaces=some"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("audit.namespaces must be optIn or all")
    );
}

/// The replicas share push events through the chart's ConfigMap, the one object of the namespace
/// they may write.
#[test]
fn the_replicas_write_only_the_events_config_map() {
    let docs = documents(&render(&[]));
    let events = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the events ConfigMap");
    assert_eq!(events["metadata"]["name"], "rxg-events");
    let role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
    let writes: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|verb| verb != "get" && verb != "list" && verb != "watch")
                && rule["resources"].to_string().contains("configmaps")
        })
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0]["resourceNames"],
        serde_json::json!(["rxg-events"])
    );
    assert_eq!(writes[0]["verbs"], serde_json::json!(["update", "patch"]));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RXG_EVENTS_CONFIGMAP" && e["value"] == "rxg-events"),
        "{env}"
    );
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
    let output = helm_template(&["webhook.namespaces=some"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("optIn or all"));
}

fn decode(data: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(data.as_str().unwrap_or_default().trim())
        .unwrap()
}

/// The DER of each certificate of a PEM bundle, in order.
fn certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        })
        .collect()
}

/// (subject key id, authority key id) of a DER certificate.
fn key_ids(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let (mut subject, mut authority) = (Vec::new(), Vec::new());
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject = id.0.to_vec(),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority = aki
                    .key_identifier
                    .as_ref()
                    .map(|id| id.0.to_vec())
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    (subject, authority)
}

/// `leaf` names `ca` as its issuer by key (Go's x509, which helm uses, sets both identifiers).
fn issued_by(leaf: &[u8], ca: &[u8]) -> bool {
    let (ca_subject, _) = key_ids(ca);
    !ca_subject.is_empty() && key_ids(leaf).1 == ca_subject
}

#[test]
fn the_chart_keeps_no_ca_key_and_the_pod_mounts_only_its_serving_pair() {
    for values in [&[][..], &["tls.rotation=7"][..]] {
        let docs = documents(&render(values));
        let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
        assert_eq!(secrets.len(), 1, "{values:?}");
        for secret in &secrets {
            let data = secret["data"].as_object().unwrap();
            let keys: Vec<&str> = data.keys().map(String::as_str).collect();
            assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "{values:?}");
            // Whatever the key is called: one private key in the Secret, the serving one.
            let private: Vec<&str> = data
                .iter()
                .filter(|(_, v)| String::from_utf8_lossy(&decode(v)).contains("PRIVATE KEY"))
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(private, ["tls.key"], "{values:?}");
            // The webhooks trust what the Secret records, and the serving certificate is issued by it.
            let bundle = decode(&data["ca.crt"]);
            let ca = certificates(&bundle);
            assert_eq!(ca.len(), 1, "a first install trusts one CA");
            assert!(issued_by(
                &certificates(&decode(&data["tls.crt"]))[0],
                &ca[0]
            ));
            for webhook in docs.iter().filter(|d| {
                d["kind"]
                    .as_str()
                    .is_some_and(|k| k.ends_with("WebhookConfiguration"))
            }) {
                assert_eq!(
                    webhook["webhooks"][0]["clientConfig"]["caBundle"], data["ca.crt"],
                    "{webhook:#}"
                );
            }
        }
        // The pod mounts the serving pair only, by item: a key added to the Secret later is not mounted.
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
        assert_eq!(
            volumes[0]["secret"]["items"],
            serde_json::json!([{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]),
            "{volumes:#}"
        );
        // Secrets are readable in the release's namespace only (see the README: the controller watches
        // the Secrets policies name there), never cluster-wide.
        for role in docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
        {
            for rule in role["rules"].as_array().unwrap() {
                let resources = rule["resources"].as_array().unwrap();
                if !resources.iter().any(|r| r == "secrets") {
                    continue;
                }
                assert_eq!(role["kind"], "Role", "{role:#}");
                assert_eq!(role["metadata"]["namespace"], NAMESPACE);
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(
                        ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                        "Secrets are only ever read: {rule}"
                    );
                }
            }
        }
    }
}

fn json_of(output: &Output) -> Value {
    assert_success("kubectl get", output);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every Secret of the namespace, decoded: name -> key -> bytes.
fn secrets(cluster: &ControlPlane) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let list = json_of(&cluster.kubectl(&["get", "secrets", "-n", NAMESPACE, "-o", "json"]));
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|secret| {
            let data = secret["data"]
                .as_object()
                .map(|data| data.iter().map(|(k, v)| (k.clone(), decode(v))).collect())
                .unwrap_or_default();
            (
                secret["metadata"]["name"].as_str().unwrap().to_owned(),
                data,
            )
        })
        .collect()
}

/// The caBundle of both webhook configurations, which must agree.
fn ca_bundle(cluster: &ControlPlane) -> Vec<u8> {
    let bundles: Vec<Vec<u8>> = [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ]
    .iter()
    .map(|kind| {
        let webhook = json_of(&cluster.kubectl(&["get", kind, "rxg", "-o", "json"]));
        decode(&webhook["webhooks"][0]["clientConfig"]["caBundle"])
    })
    .collect();
    assert_eq!(
        bundles[0], bundles[1],
        "the two webhooks trust different CAs"
    );
    bundles[0].clone()
}

#[test]
fn upgrades_keep_the_certificate_and_a_rotation_trusts_the_old_ca_until_the_next() {
    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    assert_success("helm install", &Helm::new(&cluster).install());
    let tls = |cluster: &ControlPlane| secrets(cluster)["rxg-tls"].clone();
    let first = tls(&cluster);
    assert_eq!(
        first.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    assert_eq!(ca_bundle(&cluster), first["ca.crt"]);
    let ca1 = certificates(&first["ca.crt"]);
    assert_eq!(ca1.len(), 1);

    // An upgrade that rotates nothing keeps the certificate and the CA, byte for byte.
    assert_success(
        "helm upgrade",
        &helm_upgrade(&cluster, &["podAnnotations.rollout=second"]),
    );
    assert_eq!(
        tls(&cluster),
        first,
        "a plain upgrade changed the certificate"
    );

    // A rotation: a new CA (the old one's key was never kept) and a new certificate issued by it; the
    // webhooks trust the new CA and the previous one, so replicas still serving the old certificate
    // are answered until the kubelet gives them the new files.
    assert_success("helm upgrade", &helm_upgrade(&cluster, &["tls.rotation=2"]));
    let second = tls(&cluster);
    assert_ne!(second["tls.crt"], first["tls.crt"]);
    assert_ne!(second["tls.key"], first["tls.key"]);
    let ca2 = certificates(&second["ca.crt"]);
    assert_eq!(ca2.len(), 2, "new CA and previous CA");
    assert_eq!(ca2[1], ca1[0], "the previous CA stays trusted");
    assert!(issued_by(&certificates(&second["tls.crt"])[0], &ca2[0]));
    assert!(issued_by(&certificates(&first["tls.crt"])[0], &ca2[1]));
    assert_eq!(ca_bundle(&cluster), second["ca.crt"]);
    assert_success(
        "helm upgrade",
        &helm_upgrade(&cluster, &["podAnnotations.rollout=third"]),
    );
    assert_eq!(
        tls(&cluster),
        second,
        "an upgrade after a rotation changed it again"
    );

    // The next rotation drops the CA before the previous one.
    assert_success("helm upgrade", &helm_upgrade(&cluster, &["tls.rotation=3"]));
    let third = tls(&cluster);
    let ca3 = certificates(&third["ca.crt"]);
    assert_eq!(ca3.len(), 2);
    assert_eq!(ca3[1], ca2[0]);
    assert!(
        !ca3.contains(&ca1[0]),
        "the first CA is trusted two rotations later"
    );
    assert_eq!(ca_bundle(&cluster), third["ca.crt"]);

    // No Secret of the namespace holds a CA key, Helm's release records (which hold the rendered
    // manifests, and which the webhook's ServiceAccount can read) included: the only private key
    // anywhere is the serving one, which the pods hold anyway.
    for (name, data) in secrets(&cluster) {
        for (key, bytes) in data {
            let text = if name.starts_with("sh.helm.release.") {
                release_manifest(&bytes)
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            };
            assert!(!text.contains("ca.key"), "{name}/{key} names a CA key");
            if key != "tls.key" {
                assert!(
                    !text.contains("PRIVATE KEY"),
                    "{name}/{key} holds a private key"
                );
            }
        }
    }
}

#[test]
fn the_first_upgrade_from_a_chart_that_kept_the_ca_key_removes_it() {
    // The chart as it was: this one, with the CA key kept in the Secret beside the certificate.
    let old = tempfile::tempdir().unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(crate::support::repo_root().join("charts/registryx-guard"))
        .arg(old.path())
        .output()
        .unwrap();
    assert_success("copy the chart", &copy);
    let chart = old.path().join("registryx-guard");
    let webhooks = chart.join("templates/webhooks.yaml");
    let text = std::fs::read_to_string(&webhooks).unwrap();
    let kept = text.replace(
        "  ca.crt: {{ $tls.ca }}\n",
        "  ca.crt: {{ $tls.ca }}\n  ca.key: {{ \"the old chart's CA key\" | b64enc }}\n",
    );
    assert_ne!(
        kept, text,
        "the Secret's ca.crt line moved; update this test"
    );
    std::fs::write(&webhooks, kept).unwrap();

    let cluster = ControlPlane::start();
    assert_success(
        "namespace",
        &cluster.kubectl(&["create", "namespace", NAMESPACE]),
    );
    assert_success(
        "helm install (old chart)",
        &Helm::new(&cluster).chart(chart).install(),
    );
    let before = secrets(&cluster)["rxg-tls"].clone();
    assert!(before.contains_key("ca.key"));
    assert_success("helm upgrade", &helm_upgrade(&cluster, &[]));
    let after = secrets(&cluster)["rxg-tls"].clone();
    assert_eq!(
        after.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"],
        "the CA key outlived the upgrade"
    );
    assert_eq!(
        after["tls.crt"], before["tls.crt"],
        "the certificate is kept"
    );
    assert_eq!(after["ca.crt"], before["ca.crt"]);
    assert_eq!(ca_bundle(&cluster), after["ca.crt"]);
}

/// The manifest of a Helm release record (base64 of gzip of JSON), with the Secret data it renders
/// decoded (but the serving key's), so that a private key inside it can be seen.
fn release_manifest(record: &[u8]) -> String {
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(record)
        .unwrap();
    let mut gunzip = Command::new("gzip")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        gunzip.stdin.take().unwrap().write_all(&gzipped).unwrap();
    }
    let json = gunzip.wait_with_output().unwrap().stdout;
    let release: Value = serde_json::from_slice(&json).unwrap();
    let manifest = release["manifest"].as_str().unwrap().to_owned();
    let mut text = manifest.clone();
    for doc in documents(&manifest) {
        for (key, value) in doc["data"].as_object().into_iter().flatten() {
            // The serving key is rendered, as it must be; every other value is looked into.
            if doc["kind"] == "Secret" && key != "tls.key" {
                text.push_str(&format!(
                    "\n{key}: {}",
                    String::from_utf8_lossy(&decode(value))
                ));
            }
        }
    }
    text
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
