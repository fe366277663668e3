//! `registryx-guard verify` as a CI pipeline runs it: exit codes, the text a user acts on, and JSON.

mod support;

use std::process::{Command, Output};

use support::cosign::{Cosign, Format};
use support::registry::Registry;
use support::verdicts::PolicyYaml;

fn write_policy(dir: &std::path::Path, registry: &Registry, cosign: &Cosign) -> std::path::PathBuf {
    let policy = PolicyYaml::key(&registry.host, &cosign.public_key_pem())
        .named("team-signed")
        .images(&format!("{}/team/**", registry.host))
        .authority_named("release-key");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy.yaml()).unwrap();
    path
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .arg("verify")
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn exit_codes_say_admitted_refused_or_bad_input() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "cli-signed")
        .await;
    let unsigned = registry
        .push_image("team/app", "unsigned", "cli-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &registry, &cosign);
    let policy = policy.to_str().unwrap();

    let output = verify(&[&signed.reference, "--policy", policy]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let out = text(&output);
    assert!(
        out.contains("policy team-signed: passed")
            && out.contains("authority release-key: verified"),
        "{out}"
    );
    assert!(out.contains("result: admitted"), "{out}");

    let output = verify(&[&unsigned.reference, "--policy", policy]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let out = text(&output);
    assert!(
        out.contains(&format!("no signature found for {}", unsigned.digest)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "sign it with: cosign sign --key <the private key of authority release-key> {}",
            unsigned.by_digest()
        )),
        "{out}"
    );
    assert!(out.contains("result: refused"), "{out}");

    let output = verify(&[&unsigned.reference, "--policy", policy, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["digest"], unsigned.digest.as_str());
    assert_eq!(json["policies"][0]["passed"], false);
    assert_eq!(json["policies"][0]["authorities"][0]["verified"], false);

    let output = verify(&["Not A Reference", "--policy", policy]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("\"Not A Reference\" does not parse"),
        "{}",
        text(&output)
    );

    // An image no policy governs is refused, as the webhook refuses it, without a registry call: the
    // registry here does not exist. --unmatched=allow admits it.
    let output = verify(&["127.0.0.1:9/elsewhere/app:1", "--policy", policy]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("no policy governs this image"));
    let output = verify(&[
        "127.0.0.1:9/elsewhere/app:1",
        "--policy",
        policy,
        "--unmatched",
        "allow",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    // The same image under another spelling of the policy's registry is governed, and so verified.
    let respelled = signed.reference.replacen("127.0.0.1:", "127.0.0.1:0", 1);
    let output = verify(&[&respelled, "--policy", policy]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[test]
fn a_policy_with_a_broken_key_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: broken}\nspec:\n  images: ['r.example/**']\n  \
         authorities:\n  - name: release\n    key: {data: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\"}\n",
    )
    .unwrap();
    let output = verify(&["r.example/app:1", "--policy", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let out = text(&output);
    assert!(
        out.contains("policy \"broken\" is not usable") && out.contains("authority \"release\""),
        "{out}"
    );
}

#[tokio::test]
async fn verify_sees_what_the_webhook_sees_several_images_a_manifest_a_namespace() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "cli-many-signed")
        .await;
    let other = registry
        .push_image("team/other", "signed", "cli-many-other")
        .await;
    let unsigned = registry
        .push_image("team/app", "unsigned", "cli-many-unsigned")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    cosign.sign(&other.reference, Format::Legacy);
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &registry, &cosign);
    let policy = policy.to_str().unwrap();

    // Several images in one run: all admitted, or exit 1 naming the one that is not.
    let output = verify(&[&signed.reference, &other.reference, "--policy", policy]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        text(&output).matches("result: admitted").count(),
        2,
        "{}",
        text(&output)
    );
    let output = verify(&[
        &signed.reference,
        &unsigned.reference,
        "--policy",
        policy,
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json:#}");
    assert_eq!(json[1]["policies"][0]["reasonKind"], "no_signature");

    // A Deployment manifest: every image of its pod template.
    let manifest = dir.path().join("deployment.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    \
             metadata: {{labels: {{app: web}}}}\n    spec:\n      initContainers: [{{name: init, image: '{}'}}]\n      containers: [{{name: web, image: '{}'}}]\n",
            other.reference, signed.reference
        ),
    )
    .unwrap();
    let output = verify(&["--resource", manifest.to_str().unwrap(), "--policy", policy]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains(&other.reference) && text(&output).contains(&signed.reference));

    // A namespace whose labels the policy's namespaceSelector does not take: the image is governed by
    // no policy there, and refused as the webhook would refuse it.
    let scoped = dir.path().join("scoped.yaml");
    let yaml = std::fs::read_to_string(policy).unwrap();
    std::fs::write(
        &scoped,
        format!("{yaml}  namespaceSelector: {{matchLabels: {{env: prod}}}}\n"),
    )
    .unwrap();
    let scoped = scoped.to_str().unwrap();
    let output = verify(&[
        &signed.reference,
        "--policy",
        scoped,
        "--namespace",
        "dev",
        "--namespace-labels",
        "env=dev",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("no policy governs"),
        "{}",
        text(&output)
    );
    let output = verify(&[
        &signed.reference,
        "--policy",
        scoped,
        "--namespace",
        "prod",
        "--namespace-labels",
        "env=prod",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[tokio::test]
async fn json_output_carries_the_rego_input_the_webhook_would_give() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "cli-rego-input")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("rego.yaml");
    let yaml = PolicyYaml::key(&registry.host, &cosign.public_key_pem())
        .named("with-rego")
        .spec("rego:\n    modules:\n      - name: pass.rego\n        source: |\n          package registryx.policy\n          default allow = true")
        .yaml();
    std::fs::write(&policy, yaml).unwrap();
    let output = verify(&[
        &signed.reference,
        "--policy",
        policy.to_str().unwrap(),
        "--namespace",
        "payments",
        "--namespace-labels",
        "environment=prod",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let input = &json["policies"][0]["regoInput"];
    assert_eq!(input["namespace"], "payments", "{json:#}");
    assert_eq!(input["signed"], true, "{json:#}");
    assert_eq!(input["operation"], "pull", "{json:#}");
}

#[tokio::test]
async fn registryx_default_module_decides_by_the_environment_offline_too() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let unsigned = registry
        .push_image("team/app", "unsigned", "cli-environment")
        .await;
    // The example policy as shipped, its module byte for byte RegistryX's, pointed at this registry.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/registryx-default-rego.yaml"
    ))
    .unwrap();
    let mut policy: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
    let spec = &mut policy["spec"];
    spec["images"] = serde_yaml::to_value([format!("{}/**", registry.host)]).unwrap();
    spec["authorities"][0]["key"]["data"] = cosign.public_key_pem().into();
    spec["registry"] = serde_yaml::from_str("{insecure: true}").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registryx-default.yaml");
    std::fs::write(&path, serde_yaml::to_string(&policy).unwrap()).unwrap();
    let path = path.to_str().unwrap();

    // Not production: RegistryX's module lets an unsigned image through, as RegistryX does.
    let output = verify(&[&unsigned.reference, "--policy", path]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    // Production, from the flag or from the namespace's label: refused with the module's message.
    for flags in [
        vec!["--environment", "prod"],
        vec![
            "--namespace",
            "shop",
            "--namespace-labels",
            "environment=prod",
        ],
    ] {
        let mut args = vec![
            unsigned.reference.as_str(),
            "--policy",
            path,
            "--output",
            "json",
        ];
        args.extend(flags.iter().copied());
        let output = verify(&args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{flags:?}: {}",
            text(&output)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let verdict = &json["policies"][0];
        assert_eq!(verdict["regoInput"]["environment"], "prod", "{json:#}");
        assert_eq!(verdict["reasonKind"], "rego", "{json:#}");
        assert!(
            verdict["reasons"]
                .to_string()
                .contains("Image is not signed (cosign signature missing). Blocked in Prod."),
            "{json:#}"
        );
    }
}
