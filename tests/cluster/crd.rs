//! The generated CRD against a real kube-apiserver: it is accepted, valid policies are stored, and the
//! shapes the schema and its CEL rules forbid are refused at `kubectl apply` time with a clear message.

use crate::support::cluster::ControlPlane;
use crate::support::cosign::assert_success;

fn apply(cluster: &ControlPlane, yaml: &str) -> std::process::Output {
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], yaml)
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

fn assert_refused(cluster: &ControlPlane, yaml: &str, message: &str) {
    let output = apply(cluster, yaml);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the API server accepted:\n{yaml}");
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
}

#[test]
fn the_api_server_accepts_the_crd_and_enforces_its_schema() {
    let cluster = ControlPlane::start();
    cluster.install_crd();

    let valid = policy(
        "key-based",
        "  images: ['registry.example/prod/**']\n  authorities:\n  - name: release\n    key: {data: 'PEM'}\n",
    );
    assert_success("apply a valid policy", &apply(&cluster, &valid));
    let got = cluster.kubectl(&[
        "get",
        "isp",
        "key-based",
        "-o",
        "jsonpath={.spec.mode}/{.spec.signatureRequired}",
    ]);
    assert_success("kubectl get isp", &got);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "enforce/true",
        "defaults were not applied"
    );
    let columns = cluster.kubectl(&["get", "isp"]);
    let header = String::from_utf8_lossy(&columns.stdout);
    for column in ["READY", "MODE", "AUTHORITIES", "IMAGES", "AGE"] {
        assert!(header.contains(column), "no {column} column in:\n{header}");
    }

    assert_refused(
        &cluster,
        &policy("no-images", "  images: []\n  signatureRequired: false\n"),
        "spec.images",
    );
    assert_refused(
        &cluster,
        &policy(
            "bad-mode",
            "  images: ['a/**']\n  mode: dryrun\n  signatureRequired: false\n",
        ),
        "Unsupported value: \"dryrun\"",
    );
    assert_refused(
        &cluster,
        &policy(
            "both",
            "  images: ['a/**']\n  authorities:\n  - name: x\n    key: {data: PEM}\n    keyless:\n      identities: [{issuer: i, subject: s}]\n      trustRoot: {fulcioCA: PEM}\n",
        ),
        "an authority needs exactly one of key or keyless",
    );
    assert_refused(
        &cluster,
        &policy(
            "neither",
            "  images: ['a/**']\n  authorities:\n  - name: x\n",
        ),
        "an authority needs exactly one of key or keyless",
    );
    assert_refused(
        &cluster,
        &policy("no-authority", "  images: ['a/**']\n"),
        "signatureRequired needs at least one authority",
    );
    assert_refused(
        &cluster,
        &policy(
            "half-identity",
            "  images: ['a/**']\n  authorities:\n  - name: x\n    keyless:\n      identities: [{issuer: i}]\n      trustRoot: {fulcioCA: PEM}\n",
        ),
        "an identity needs exactly one of subject or subjectRegExp",
    );
    // Globs that can never match a reference are refused at apply time where CEL can tell.
    for (glob, message) in [
        ("https://registry.example/app", "not URLs: drop the scheme"),
        ("registry.example/app ", "whitespace"),
        (
            "Registry.example/Team/app",
            "repository names are lower case",
        ),
        ("Nginx", "repository names are lower case"),
    ] {
        assert_refused(
            &cluster,
            &policy(
                "never-matches",
                &format!("  images: ['{glob}']\n  signatureRequired: false\n"),
            ),
            message,
        );
    }
    // Host names may be any case, and tags too: these are valid.
    assert_success(
        "mixed-case host and tag",
        &apply(
            &cluster,
            &policy(
                "mixed-case",
                "  images: ['Registry.Example.COM:443/team/app:V1.*', 'nginx']\n  signatureRequired: false\n",
            ),
        ),
    );
    let pinning = cluster.kubectl(&[
        "get",
        "isp",
        "mixed-case",
        "-o",
        "jsonpath={.spec.mutateDigest}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&pinning.stdout),
        "true",
        "admitted tags are pinned by default"
    );
}
