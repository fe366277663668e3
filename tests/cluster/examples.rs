//! RegistryX's signing guide (IMAGE_SIGNING.md) walked as a new user walks it, and every file of
//! policies/ applied as shipped, unedited: the registry where the guide puts it (`localhost:5000`, plain
//! HTTP, its REST API on the same port: `support::fakes::RegistryxOnLocalhost` in front of a real
//! registry), the key from `cosign generate-key-pair`, then the same decisions from `verify` (the
//! current directory standing in for the cluster's Secret and ConfigMap), from `verify --cluster`, and
//! from the API server through the webhook, with the guide's own image running on the node.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::e2e::{Webhook, wait_ready};
use super::pods::{crane_push, jsonpath, pause_image, text, wait_until};
use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, Format, assert_success};
use crate::support::fakes::{REGISTRYX_LOCALHOST, RegistryxOnLocalhost};
use crate::support::helm::{NAMESPACE, helm_install};
use crate::support::keyless::{Sct, TestCa, TestCtLog};
use crate::support::node::Node;
use crate::support::registry::Registry;
use crate::support::rekor::{TestRekor, now};
use crate::support::verdicts::StoredSignature;

/// What a decision should be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Admit,
    Refuse,
    /// Admitted with a warning (`mode: warn`).
    Warn,
}

use Expect::{Admit, Refuse, Warn};

/// Every shipped file, the namespace it is tried in, and its decisions for the guide's signed image,
/// an unsigned one, a signed one whose RegistryX scan found critical vulnerabilities, and one signed
/// keylessly by the release workflow keyless.yaml names (logged, with an SCT). `shop` is
/// labelled `environment=prod` (RegistryX's own module refuses only there), `staging` is `env=staging`
/// (warn-mode's namespaceSelector).
const EXAMPLES: &[(&str, &str, [Expect; 4])] = &[
    ("key-based.yaml", "shop", [Admit, Refuse, Admit, Refuse]),
    // The guide's images are signed with a key, not keylessly by the CI's identity.
    ("keyless.yaml", "shop", [Refuse, Refuse, Refuse, Admit]),
    (
        "registry-guide-rego.yaml",
        "shop",
        [Admit, Refuse, Admit, Refuse],
    ),
    (
        "registryx-default-rego.yaml",
        "shop",
        [Admit, Refuse, Refuse, Refuse],
    ),
    // No attestation was made for these images: a signature alone is not enough.
    (
        "slsa-provenance.yaml",
        "shop",
        [Refuse, Refuse, Refuse, Refuse],
    ),
    (
        "vuln-attestation.yaml",
        "shop",
        [Refuse, Refuse, Refuse, Refuse],
    ),
    (
        "vulnerability-gate.yaml",
        "shop",
        [Admit, Refuse, Refuse, Refuse],
    ),
    ("warn-mode.yaml", "staging", [Admit, Warn, Admit, Warn]),
];

/// The namespaces and the labels each carries in the cluster (and gives `verify` offline).
const NAMESPACES: &[(&str, &[&str])] = &[
    ("shop", &["registryx.io/include=true", "environment=prod"]),
    ("staging", &["registryx.io/include=true", "env=staging"]),
];

fn labels_of(namespace: &str) -> &'static [&'static str] {
    NAMESPACES
        .iter()
        .find(|(name, _)| *name == namespace)
        .map(|(_, labels)| *labels)
        .unwrap()
}

/// `registryx-guard verify ARGS` in `dir`, as a user runs it there.
fn verify(dir: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registryx-guard"));
    command
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", dir.join("docker"))
        .env_remove("RXG_POLICY")
        .env_remove("KUBECONFIG");
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    command.output().unwrap()
}

/// The decision `verify`'s exit code and words give.
fn decision_of(output: &Output) -> Option<Expect> {
    match output.status.code() {
        Some(0) if text(output).contains("warning") => Some(Warn),
        Some(0) => Some(Admit),
        Some(1) => Some(Refuse),
        _ => None,
    }
}

/// The decision the API server gives for a pod of `image` in `namespace` (`--dry-run=server` goes
/// through the webhooks and creates nothing).
fn admission_of(cluster: &ControlPlane, namespace: &str, image: &str) -> (Option<Expect>, String) {
    let output = cluster.kubectl(&[
        "run",
        "example",
        "--image",
        image,
        "--restart",
        "Never",
        "-n",
        namespace,
        "--dry-run=server",
    ]);
    let said = text(&output);
    let decision = if output.status.success() {
        if said.to_lowercase().contains("warning") {
            Some(Warn)
        } else {
            Some(Admit)
        }
    } else if said.contains("denied the request") {
        Some(Refuse)
    } else {
        None
    };
    (decision, said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_guide_and_every_shipped_example_decide_as_shipped() {
    let cluster = ControlPlane::start_for_pods();
    let node = Node::start(&cluster);
    let upstream = Registry::distribution();
    let registryx = RegistryxOnLocalhost::start(&upstream.host);
    node.allow_plain_http(REGISTRYX_LOCALHOST);
    let work = tempfile::tempdir().unwrap();

    // 1. The guide: a key pair, images pushed, one signed with the guide's command (offline: no
    // transparency-log upload, there is no internet here).
    let cosign = Cosign::with_new_key_pair();
    let home = cosign.public_key();
    let home = home.parent().unwrap();
    let signed = format!("{REGISTRYX_LOCALHOST}/demo/alpine:latest");
    let unsigned = format!("{REGISTRYX_LOCALHOST}/demo/unsigned:latest");
    let vulnerable = format!("{REGISTRYX_LOCALHOST}/demo/vulnerable:latest");
    for (image, seed) in [
        (&signed, "guide-signed"),
        (&unsigned, "guide-unsigned"),
        (&vulnerable, "guide-vulnerable"),
    ] {
        crane_push(&pause_image(work.path(), seed), image);
    }
    cosign.sign(&signed, Format::Legacy);
    cosign.sign(&vulnerable, Format::Legacy);
    let digest = String::from_utf8(
        Command::new(crate::support::tool("crane"))
            .args(["digest", "--insecure", &vulnerable])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    registryx.scan(
        digest.trim(),
        serde_json::json!({"status": "completed", "critical": 3, "high": 5, "medium": 0, "low": 0,
                           "high_priority": 3}),
    );

    // cosign's own words, `cosign` replaced by `registryx-guard` (with the flag `cosign verify` needs
    // as well for a signature made without a transparency-log upload).
    let guide = |image: &str| {
        verify(
            home,
            None,
            &["--key", "cosign.pub", "--insecure-ignore-tlog", image],
        )
    };
    let output = guide(&signed);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = guide(&unsigned);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("cosign sign --key"),
        "the remedy is missing: {}",
        text(&output)
    );

    // keyless.yaml's world: a CA with its CT log and its Rekor, whose trusted_root.json the ConfigMap
    // will hold, and an image signed keylessly by the workflow the file names, its signature logged.
    let (ca, ct_log, rekor) = (TestCa::new("examples"), TestCtLog::new(), TestRekor::new());
    let trusted_root = rekor.trusted_by(ca.trusted_root_json_with_ct_log(&ct_log));
    std::fs::write(
        home.join("trusted_root.json"),
        serde_json::to_string_pretty(&trusted_root).unwrap(),
    )
    .unwrap();
    let leaf = ca.issue_with(
        "https://token.actions.githubusercontent.com",
        "https://github.com/example/apps/.github/workflows/release.yml@refs/tags/v1.2.0",
        Sct::By(&ct_log),
    );
    let pushed = upstream
        .push_image("demo/keyless", "latest", "guide-keyless")
        .await;
    let keyless = format!("{REGISTRYX_LOCALHOST}/demo/keyless:latest");
    leaf.sign(&keyless, Format::Legacy);
    let stored = StoredSignature::read(&upstream, &pushed).await;
    let entry = rekor.entry(stored.body(leaf.cert_pem()), now() - 60);
    stored
        .attach(&upstream, &pushed, &rekor.bundle(&entry))
        .await;

    let images = [
        signed.as_str(),
        unsigned.as_str(),
        vulnerable.as_str(),
        keyless.as_str(),
    ];

    // 2. Every shipped file through `verify`, offline, where the guide left cosign.pub.
    let policies = crate::support::repo_root().join("policies");
    let mut offline = Vec::new();
    for (file, namespace, expected) in EXAMPLES {
        let path = policies.join(file);
        let path = path.to_str().unwrap();
        for (image, expect) in images.iter().zip(expected) {
            let mut args = vec!["--policy", path, "--namespace", namespace];
            for label in labels_of(namespace) {
                args.extend(["--namespace-labels", label]);
            }
            args.push(image);
            let output = verify(home, None, &args);
            assert_eq!(
                decision_of(&output),
                Some(*expect),
                "verify --policy policies/{file} {image} (in {namespace}): {}",
                text(&output)
            );
            offline.push((file, *image, text(&output)));
        }
    }
    let notes = offline
        .iter()
        .map(|(_, _, said)| said)
        .find(|said| said.contains("note: Secret"));
    assert!(
        notes.is_some_and(|said| said.contains("./cosign.pub")),
        "verify does not say it read ./cosign.pub for the Secret: {offline:?}"
    );

    // 3. The cluster: the chart, the webhook, the Secret and the ConfigMap the files name.
    let port = crate::support::free_port();
    helm_install(
        &cluster,
        &[
            &format!("webhook.url=https://127.0.0.1:{port}"),
            "replicaCount=0",
        ],
    );
    let webhook = Webhook::start(&cluster, port);
    let public_key = format!(
        "--from-file=cosign.pub={}",
        home.join("cosign.pub").display()
    );
    assert_success(
        "the Secret of cosign.pub",
        &cluster.kubectl(&[
            "create",
            "secret",
            "generic",
            "cosign-pub",
            "-n",
            NAMESPACE,
            &public_key,
        ]),
    );
    let roots = format!(
        "--from-file=trusted_root.json={}",
        home.join("trusted_root.json").display()
    );
    assert_success(
        "the ConfigMap of trusted_root.json",
        &cluster.kubectl(&[
            "create",
            "configmap",
            "sigstore-trusted-root",
            "-n",
            NAMESPACE,
            &roots,
        ]),
    );
    for (namespace, labels) in NAMESPACES {
        assert_success(
            "namespace",
            &cluster.kubectl(&["create", "namespace", namespace]),
        );
        let mut args = vec!["label", "namespace", namespace];
        args.extend(labels.iter().copied());
        assert_success("labels", &cluster.kubectl(&args));
    }

    for (file, namespace, expected) in EXAMPLES {
        let path = policies.join(file);
        let path = path.to_str().unwrap();
        assert_success(
            &format!("kubectl apply -f policies/{file}"),
            &cluster.kubectl(&["apply", "-f", path]),
        );
        let name = file.trim_end_matches(".yaml");
        wait_ready(&cluster, name, &webhook).await;
        for (image, expect) in images.iter().zip(expected) {
            let output = verify(
                home,
                Some(&cluster.kubeconfig),
                &["--cluster", "--namespace", namespace, image],
            );
            assert_eq!(
                decision_of(&output),
                Some(*expect),
                "verify --cluster {image} under policies/{file} (in {namespace}): {}",
                text(&output)
            );
            let (admitted, said) = admission_of(&cluster, namespace, image);
            assert_eq!(
                admitted,
                Some(*expect),
                "kubectl run {image} under policies/{file} (in {namespace}): {said}\n{}",
                webhook.log()
            );
            if *expect == Refuse {
                assert!(
                    said.contains(&format!("policy {name}")),
                    "the refusal does not name policy {name}: {said}"
                );
            }
        }

        // The guide's end: its signed image runs on the node under the first example; the
        // unsigned one never gets there.
        if *file == "key-based.yaml" {
            assert_success(
                "kubectl run the signed image",
                &cluster.kubectl(&[
                    "run",
                    "alpine",
                    "--image",
                    &signed,
                    "--restart",
                    "Never",
                    "-n",
                    "shop",
                ]),
            );
            wait_until(
                "the guide's signed image to run on the node",
                Duration::from_secs(90),
                || {
                    jsonpath(
                        &cluster,
                        &["get", "pod", "alpine", "-n", "shop"],
                        "{.status.phase}",
                    ) == "Running"
                },
                || {
                    format!(
                        "{}\n{}",
                        text(&cluster.kubectl(&["describe", "pod", "alpine", "-n", "shop"])),
                        node.logs()
                    )
                },
            );
            let refused = cluster.kubectl(&[
                "run",
                "unsigned",
                "--image",
                &unsigned,
                "--restart",
                "Never",
                "-n",
                "shop",
            ]);
            assert!(!refused.status.success(), "the unsigned pod was created");
            assert!(
                text(&refused).contains("no signature found"),
                "{}",
                text(&refused)
            );
            assert_success(
                "delete the pod",
                &cluster.kubectl(&["delete", "pod", "alpine", "-n", "shop", "--wait=false"]),
            );
        }
        assert_success(
            &format!("kubectl delete -f policies/{file}"),
            &cluster.kubectl(&["delete", "-f", path]),
        );
    }
}
