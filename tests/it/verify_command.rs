//! `registryx-guard verify` as a CI pipeline runs it: exit codes, the text a user acts on, and JSON.

use std::process::{Command, Output};

use crate::support::cosign::{Cosign, Format};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;

/// Policy `team-signed`: authority `release-key` trusts `cosign`'s key for `<registry>/team/**`.
fn team_policy(registry: &Registry, cosign: &Cosign) -> PolicySpec {
    PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .named("team-signed")
        .images([format!("{}/team/**", registry.host).as_str()])
        .authority_named("release-key")
}

/// `policy` as `policy.yaml` in `dir`, for `verify --policy`.
fn write_policy(dir: &std::path::Path, policy: &PolicySpec) -> std::path::PathBuf {
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
    let policy = write_policy(dir.path(), &team_policy(&registry, &cosign));
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
    assert!(text(&output).contains("is governed by no ImageSigningPolicy"));
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
    std::fs::write(&path, broken_key_policy("broken", "r.example/**")).unwrap();
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
    let policy = write_policy(dir.path(), &team_policy(&registry, &cosign));
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
        text(&output).contains("is governed by no ImageSigningPolicy"),
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
    let yaml = PolicySpec::key(&registry.host, &cosign.public_key_pem())
        .named("with-rego")
        .rego(&[(
            "pass.rego",
            "package registryx.policy\ndefault allow = true",
        )])
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
    // The shipped file reads the key from a Secret; this test gives it inline.
    let mut key = serde_yaml::Mapping::new();
    key.insert("data".into(), cosign.public_key_pem().into());
    spec["authorities"][0]["key"] = key.into();
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

/// Policy `p` for r.example with a real key.
fn base_spec() -> PolicySpec {
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    PolicySpec::key("r.example", &pem).named("p")
}

/// [`base_spec`] as the text a user writes, which the cases below misspell: inline YAML on purpose.
fn base_policy() -> String {
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let key = pem.trim_end().replace('\n', "\n        ");
    format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: p}}\nspec:\n  images: ['r.example/**']\n  \
         registry: {{insecure: true}}\n  authorities:\n  - name: release\n    key:\n      data: |\n        {key}\n"
    )
}

/// The shapes of "nothing Ready that cannot decide" (issue 17): each was accepted by `verify --policy`
/// and served as a Ready policy that refused less than its text says. Each is now bad input (exit 2),
/// and the output names what is wrong and what was meant.
fn cannot_decide_cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let base = base_policy();
    let with_rego = |modules: &[(&str, &str)]| base_spec().rego(modules).yaml();
    vec![
        (
            "a misspelt RegistryX package",
            with_rego(&[(
                "x.rego",
                "package registryx.policies\ndefault allow = true\nviolations[msg] {\n  not input.is_signed\n  msg := \"unsigned\"\n}\n",
            )]),
            vec![
                "module \"x.rego\" is in package registryx.policies (did you mean package registryx.policy?)",
                "the engine reads only deny, violations and allow in packages registry, registryx.policy and registryx_guard",
            ],
        ),
        (
            "OPA's kubernetes.admission",
            with_rego(&[(
                "k8s.rego",
                "package kubernetes.admission\ndeny contains \"unsigned\" if not input.signed\n",
            )]),
            vec!["module \"k8s.rego\" is in package kubernetes.admission: it defines deny"],
        ),
        (
            "denies in the right package",
            with_rego(&[(
                "d.rego",
                "package registry\ndenies contains \"unsigned\" if not input.signed\n",
            )]),
            vec!["denies (did you mean deny?)"],
        ),
        (
            "a typo module beside a deciding one",
            with_rego(&[
                (
                    "ok.rego",
                    "package registry\ndeny contains \"x\" if input.tag == \"x\"\n",
                ),
                (
                    "typo.rego",
                    "package registryx.policies\nviolations contains \"unsigned\" if not input.signed\n",
                ),
            ]),
            vec![
                "data.registryx.policies.violations (module \"typo.rego\" line 2: package registryx.policies is not read)",
            ],
        ),
        (
            "a host wildcard with a zero-padded port",
            base.replace("r.example/**", "reg*.invalid:0443/**"),
            vec!["glob \"reg*.invalid:0443/**\"", "write reg*.invalid:443/**"],
        ),
        (
            "a host wildcard with an out-of-range port",
            base.replace("r.example/**", "*.example:70000/**"),
            vec!["port 70000 is not 1-65535"],
        ),
        (
            "a host no reference can have",
            base.replace("r.example/**", "r_x.example/**"),
            vec!["host names are letters"],
        ),
        (
            "an unknown field of spec",
            format!("{base}  mutateDigset: false\n"),
            vec!["spec.mutateDigset: unknown field; did you mean mutateDigest?"],
        ),
        (
            "authorities misspelt",
            base.replace("  authorities:\n", "  authoritys:\n"),
            vec!["spec.authoritys: unknown field; did you mean authorities?"],
        ),
        (
            "an unknown field of an authority",
            base.replace(
                "  - name: release\n",
                "  - name: release\n    transparencyLogs: {required: false}\n",
            ),
            vec![
                "spec.authorities[0].transparencyLogs: unknown field; did you mean transparencyLog?",
            ],
        ),
        (
            "an unknown field of spec.registry",
            base.replace(
                "registry: {insecure: true}",
                "registry: {insecure: true, caBundel: x}",
            ),
            vec!["spec.registry.caBundel: unknown field; did you mean caBundle?"],
        ),
    ]
}

#[test]
fn policies_that_cannot_decide_are_bad_input_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    for (case, yaml, needles) in cannot_decide_cases() {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let output = verify(&["r.example/app:1", "--policy", path.to_str().unwrap()]);
        let out = text(&output);
        assert_eq!(output.status.code(), Some(2), "{case}: {out}\n{yaml}");
        assert!(out.contains("p.yaml"), "{case}: {out}");
        for needle in needles {
            assert!(out.contains(needle), "{case}: {needle:?} not in: {out}");
        }
    }
}

#[tokio::test]
async fn a_library_module_a_deciding_module_imports_is_accepted_and_evaluated() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry
        .push_image("team/app", "signed", "cli-library")
        .await;
    cosign.sign(&signed.reference, Format::Legacy);
    let dir = tempfile::tempdir().unwrap();
    // The library decides nothing itself; the deciding module refuses what it says in prod.
    let library_policy = team_policy(&registry, &cosign).rego(&[
        (
            "lib.rego",
            "package team.lib\nis_prod if input.environment == \"prod\"\n",
        ),
        (
            "main.rego",
            "package registry\nimport data.team.lib\ndeny contains \"no releases to prod today\" if lib.is_prod\n",
        ),
    ]);
    let path = write_policy(dir.path(), &library_policy);
    let path = path.to_str().unwrap();
    let output = verify(&[&signed.reference, "--policy", path]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = verify(&[&signed.reference, "--policy", path, "--environment", "prod"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("no releases to prod today"),
        "{}",
        text(&output)
    );
}

/// `serve --policy-dir` reads the same files: one with an unknown field does not start (exit 2, the
/// field named), and a policy whose Rego cannot decide is published not Ready, its images refused with
/// the reason.
#[test]
fn serve_with_a_policy_dir_refuses_what_cannot_decide() {
    let base = base_policy();
    let dir = tempfile::tempdir().unwrap();
    crate::support::serve_files(dir.path(), &format!("{base}  mutateDigset: false\n"));
    let (port, https) = (crate::support::free_port(), crate::support::free_port());
    // Waited for with a deadline: a server that accepts the file runs until it is stopped.
    let mut child = crate::support::serve_command(dir.path(), port, https)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("spec.mutateDigset: unknown field; did you mean mutateDigest?"),
        "{}",
        text(&output)
    );

    let dir = tempfile::tempdir().unwrap();
    let undecided = undecided_policy();
    crate::support::serve_files(dir.path(), &undecided);
    let mut child = crate::support::serve_command(dir.path(), port, https)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = crate::support::metrics_once(port, "registryx_guard_policies{ready=\"false\"} 1");
    let review = crate::support::pod_create_review(&[("app", "r.example/app:1")]);
    let answered = crate::support::post_validate(https, &review);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        metrics.contains("registryx_guard_policies{ready=\"false\"} 1")
            && metrics.contains("registryx_guard_policies{ready=\"true\"} 0"),
        "{metrics}"
    );
    let answered = answered.expect("the review is answered");
    assert_eq!(answered["response"]["allowed"], false, "{answered}");
    let message = answered["response"]["status"]["message"].to_string();
    assert!(
        message.contains("policy p is not ready")
            && message.contains("module \\\"k8s.rego\\\" is in package kubernetes.admission"),
        "{answered}"
    );
}

/// `verify` decides through the webhook's own decider: a policy that is not Ready and an image no
/// policy governs are refused in the same words, line for line, and for the same typed reasons
/// (the review's `refusal-reasons` audit annotation, `verify`'s JSON `reason`).
#[test]
fn verify_and_the_webhook_refuse_in_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let undecided = undecided_policy();
    let policy = crate::support::serve_files(dir.path(), &undecided);
    let (port, https) = (crate::support::free_port(), crate::support::free_port());
    let mut child = crate::support::serve_command(dir.path(), port, https)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::metrics_once(port, "registryx_guard_policies{ready=\"false\"} 1");
    let images = ["r.example/app:1", "127.0.0.1:9/elsewhere/app:1"];
    let review = crate::support::pod_create_review(&[("app", images[0]), ("side", images[1])]);
    let answered = crate::support::post_validate(https, &review);
    let _ = child.kill();
    let _ = child.wait();
    let answered = answered.expect("the review is answered");
    let response = &answered["response"];
    assert_eq!(response["allowed"], false, "{answered}");
    assert_eq!(
        response["auditAnnotations"]["refusal-reasons"], "not_ready,no_policy",
        "{answered}"
    );
    let message = response["status"]["message"].as_str().unwrap().to_owned();
    let refusals: Vec<&str> = message.lines().collect();
    assert_eq!(refusals.len(), 2, "{message}");

    let policy = policy.join("p.yaml");
    let policy = policy.to_str().unwrap();
    let output = verify(&[images[0], images[1], "--policy", policy]);
    // The policy file is not usable: bad input, after the decisions it changed.
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let said = text(&output);
    for refusal in &refusals {
        assert!(
            said.contains(refusal),
            "verify does not say {refusal:?}:\n{said}"
        );
    }
    let output = verify(&[images[0], images[1], "--policy", policy, "--output", "json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", text(&output)));
    assert_eq!(json[0]["reason"], "not_ready", "{json:#}");
    assert_eq!(json[1]["reason"], "no_policy", "{json:#}");
    // The verdict's shape, for scripts that read every image's alike.
    assert_eq!(json[1]["policies"], serde_json::json!([]), "{json:#}");
    assert_eq!(json[1]["digest"], serde_json::Value::Null, "{json:#}");
    assert_eq!(json[1]["canonical"], images[1], "{json:#}");
    assert_eq!(json[1]["message"].as_str(), Some(refusals[1]), "{json:#}");
}

/// A broken policy is bad input even when a usable one of the same name follows it: its name does
/// not hide it.
#[test]
fn a_broken_policy_is_not_hidden_by_a_usable_one_of_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, broken_key_policy("p", "other.example/**")).unwrap();
    let usable = dir.path().join("usable.yaml");
    std::fs::write(&usable, base_policy()).unwrap();
    let output = verify(&[
        "elsewhere.example/app:1",
        "--unmatched",
        "allow",
        "--policy",
        broken.to_str().unwrap(),
        "--policy",
        usable.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("policy \"p\" is not usable"),
        "{}",
        text(&output)
    );
}

/// Policy `p` with a module in OPA's `kubernetes.admission` package, which the engine never reads:
/// a policy that cannot decide, so not Ready.
fn undecided_policy() -> String {
    base_spec()
        .rego(&[(
            "k8s.rego",
            "package kubernetes.admission\ndeny contains \"unsigned\" if not input.signed\n",
        )])
        .yaml()
}

/// Policy `name` for `images` whose key is not a key, as a user's file says it.
fn broken_key_policy(name: &str, images: &str) -> String {
    format!(
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: {name}}}\nspec:\n  images: ['{images}']\n  \
         authorities:\n  - name: release\n    key: {{data: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\"}}\n"
    )
}

/// `verify --output json` shows every attestation found and why it counted or not, and the verified
/// predicates in the Rego input.
#[tokio::test]
async fn json_output_shows_each_attestation_and_why_it_counted() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "cli-attested").await;
    cosign.sign(&image.reference, Format::Legacy);
    let predicate = serde_json::json!({"runDetails": {"builder": {"id": "https://ci.example/b"}}});
    cosign.attest(
        &image.reference,
        "slsaprovenance1",
        &predicate,
        Format::Legacy,
    );
    Cosign::with_new_key_pair().attest(
        &image.reference,
        "slsaprovenance1",
        &predicate,
        Format::Legacy,
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        &team_policy(&registry, &cosign)
            .requiring_attestations(["slsaprovenance1"])
            .rego(&[(
                "pass.rego",
                "package registryx.policy\ndefault allow = true",
            )]),
    );

    let output = verify(&[
        &image.reference,
        "--policy",
        policy.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let found = json["policies"][0]["authorities"][0]["attestations"]
        .as_array()
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(found.len(), 2, "{json:#}");
    assert!(
        found
            .iter()
            .any(|a| a["counted"] == true && a["format"] == "legacy"),
        "{json:#}"
    );
    assert!(
        found
            .iter()
            .any(|a| a["counted"] == false && a["reasonKind"] == "attestation_other_signer"),
        "{json:#}"
    );
    let input = &json["policies"][0]["regoInput"];
    assert_eq!(
        input["attestations"]["https://slsa.dev/provenance/v1"][0]["predicate"], predicate,
        "{json:#}"
    );
    assert_eq!(
        input["attestations"]["https://slsa.dev/provenance/v1"][0]["signer"], "release-key",
        "{json:#}"
    );
}

/// A Docker config whose credentials live in a credential helper (`credsStore`, and `credHelpers` per
/// registry, which wins), as `docker login` leaves it on most desktops: `verify` asks the helper as
/// docker, cosign and crane do. The helper here is a script speaking the helpers' protocol (a keychain
/// is not available to tests); it logs what it was asked. A policy's credentialsSecretRef, which names
/// a cluster Secret, gives way to this config with one line saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_credential_helpers_are_asked_and_a_pull_secret_falls_back_to_them() {
    use crate::support::fakes::RegistryxProxy;
    let upstream = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = upstream.push_image("team/app", "v1", "cli-helpers").await;
    cosign.sign(&image.reference, Format::Legacy);
    let proxy = RegistryxProxy::start(&upstream.host)
        .await
        .with_credentials("robot", "s3cret-from-helper");
    let reference = format!("{}/team/app:v1", proxy.host());

    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let asked = dir.path().join("asked");
    let helper = |name: &str, secret: &str| {
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"{name} $server\" >> {asked}\n\
                 case \"$server\" in\n  {host}) printf '{{\"ServerURL\":\"%s\",\"Username\":\"robot\",\"Secret\":\"{secret}\"}}' \"$server\" ;;\n  \
                 *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
                asked = asked.display(),
                host = proxy.host(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    helper("rxgstore", "s3cret-from-helper");
    helper("rxgwrong", "not-the-secret");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let policy = PolicySpec::key(&proxy.host(), &cosign.public_key_pem())
        .named("team-signed")
        .credentials_secret_ref("pull-secret");
    let policy = write_policy(dir.path(), &policy);
    let run = |config: &str| {
        let docker = dir.path().join("docker");
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(docker.join("config.json"), config).unwrap();
        let _ = std::fs::remove_file(&asked);
        let output = Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
            .args(["verify", &reference, "--policy", policy.to_str().unwrap()])
            .env("DOCKER_CONFIG", &docker)
            .env("PATH", &path)
            .output()
            .unwrap();
        let asked = std::fs::read_to_string(&asked).unwrap_or_default();
        (output, asked)
    };

    // credsStore holds the credentials: admitted, the helper asked once, for this registry only.
    let (output, asked_now) = run(r#"{"auths":{},"credsStore":"rxgstore"}"#);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(asked_now, format!("rxgstore {}\n", proxy.host()));
    let said = text(&output);
    assert!(
        said.contains("registry.credentialsSecretRef (pull-secret) is read in the cluster only"),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "a secret in the output: {said}");

    // credHelpers names another helper for this registry: it wins over credsStore, and its wrong
    // secret refuses.
    let config = format!(
        r#"{{"credsStore":"rxgstore","credHelpers":{{"{}":"rxgwrong"}}}}"#,
        proxy.host()
    );
    let (output, asked_now) = run(&config);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(asked_now, format!("rxgwrong {}\n", proxy.host()));

    // A helper that is not installed: said in one line, and verified without credentials (refused).
    let (output, _) = run(r#"{"credsStore":"rxgmissing"}"#);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("docker-credential-rxgmissing"),
        "{}",
        text(&output)
    );
}

/// cosign's own words: the same `verify` flags given to `cosign` and to `registryx-guard` decide alike
/// on a matrix of key and keyless authorities, legacy and bundle signatures, a wrong key or identity
/// and no signature at all. RegistryX's guide's `cosign verify --key cosign.pub IMAGE` thus works by
/// replacing the program's name (offline here, hence `--insecure-ignore-tlog`: the signatures are
/// made with `--tlog-upload=false`).
#[tokio::test]
async fn cosign_flags_decide_as_cosign_verify_does() {
    use crate::support::keyless::TestCa;
    use std::ffi::OsString;
    const ISSUER: &str = "https://ci.example/oidc";
    const SUBJECT: &str = "https://ci.example/release@refs/heads/main";
    let legacy = Registry::distribution();
    let bundles = Registry::with_referrers();
    let cosign = Cosign::with_new_key_pair();
    let other = Cosign::with_new_key_pair();
    let ca = TestCa::with_intermediate("ci-ca");
    let leaf = ca.issue(ISSUER, SUBJECT);

    let mut cases: Vec<(String, Vec<OsString>, bool)> = Vec::new();
    let key_flags = |key: &Cosign, image: &str, format: Format| -> Vec<OsString> {
        let mut flags: Vec<OsString> = vec!["--key".into(), key.public_key().into()];
        for flag in [
            "--insecure-ignore-tlog=true",
            "--offline=true",
            &format!("--new-bundle-format={}", format == Format::Bundle),
            image,
        ] {
            flags.push(flag.into());
        }
        flags
    };
    for (registry, format, name) in [
        (&legacy, Format::Legacy, "legacy"),
        (&bundles, Format::Bundle, "bundle"),
    ] {
        let signed = registry
            .push_image("team/app", name, &format!("flags-{name}"))
            .await;
        cosign.sign(&signed.reference, format);
        let unsigned = registry
            .push_image(
                "team/app",
                &format!("{name}-unsigned"),
                &format!("flags-u-{name}"),
            )
            .await;
        let keyless = registry
            .push_image(
                "team/app",
                &format!("{name}-keyless"),
                &format!("flags-k-{name}"),
            )
            .await;
        leaf.sign(&keyless.reference, format);
        let root = leaf.trusted_root_path();
        cases.extend([
            (
                format!("key, {name}"),
                key_flags(&cosign, &signed.reference, format),
                true,
            ),
            (
                format!("another key, {name}"),
                key_flags(&other, &signed.reference, format),
                false,
            ),
            (
                format!("no signature, {name}"),
                key_flags(&cosign, &unsigned.reference, format),
                false,
            ),
            (
                format!("keyless, {name}"),
                leaf.verify_flags(&keyless.reference, format, SUBJECT, ISSUER, &root),
                true,
            ),
            (
                format!("keyless, another identity, {name}"),
                leaf.verify_flags(&keyless.reference, format, "someone@else", ISSUER, &root),
                false,
            ),
        ]);
    }
    for (case, flags, verifies) in cases {
        let mut flags = flags;
        if case.starts_with("keyless") {
            flags.push("--insecure-ignore-sct=true".into());
        }
        let theirs = cosign
            .command()
            .arg("verify")
            .args(&flags)
            .output()
            .unwrap();
        let ours = Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
            .arg("verify")
            .args(&flags)
            .env("DOCKER_CONFIG", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(
            theirs.status.success(),
            verifies,
            "{case}: cosign: {}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        assert_eq!(
            ours.status.code(),
            Some(if verifies { 0 } else { 1 }),
            "{case}: registryx-guard: {}",
            text(&ours)
        );
    }
}

/// cosign's defaults take the transparency log's key and keyless roots from Sigstore's public-good
/// TUF repository; so does `verify` given cosign's flags and nothing else. Unreachable (a proxy on a
/// closed port stands in for a machine without internet), the command stops with exit 2 before any
/// decision and says what to give instead, never admitting without the log it was asked to check.
#[tokio::test]
async fn cosign_flags_without_a_trust_root_fetch_the_public_good_roots_or_say_what_to_give() {
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "public-good").await;
    cosign.sign(&image.reference, Format::Legacy);
    let home = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
            .arg("verify")
            .args(args)
            .env("DOCKER_CONFIG", "/nonexistent")
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .env("HTTPS_PROXY", &closed)
            .env("https_proxy", &closed)
            .env_remove("SIGSTORE_REKOR_PUBLIC_KEY")
            .output()
            .unwrap()
    };
    let key = cosign.public_key();
    let key = key.to_str().unwrap();
    let output = run(&["--key", key, &image.reference]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    for needle in [
        "fetching Sigstore's public-good roots failed",
        "tuf-repo-cdn.sigstore.dev",
        "--insecure-ignore-tlog",
    ] {
        assert!(
            text(&output).contains(needle),
            "{needle}: {}",
            text(&output)
        );
    }
    let output = run(&[
        "--certificate-identity",
        "someone@example.com",
        "--certificate-oidc-issuer",
        "https://accounts.example.com",
        &image.reference,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("--trusted-root FILE"),
        "{}",
        text(&output)
    );
    // Told to skip the log, nothing is fetched and the signature decides.
    let output = run(&["--key", key, "--insecure-ignore-tlog", &image.reference]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}
