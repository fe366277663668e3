//! A release users can install and trust (`make release`, e2e/release.sh): the image pushed by digest
//! and signed, the chart pinned to that digest pushed to `oci://<registry>/charts` and signed too, into
//! a real registry on the node's address. The chart is then installed from the registry with the very
//! `helm install` line the script prints, its pods pull the signed image and become Ready; both
//! signatures verify with `cosign verify` (the printed lines) and `registryx-guard verify`, an unsigned
//! copy of either does not; and the chart's own policy (selfPolicy) admits the signed guard image in an
//! opted-in namespace and refuses an unsigned image pushed into the guard's repository.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::cluster::ControlPlane;
use crate::support::cosign::{Cosign, PASSWORD, assert_success};
use crate::support::helm::NAMESPACE;
use crate::support::node::Node;
use crate::support::policy::release_key_policy;
use crate::support::registry::Registry;
use crate::support::{repo_root, tool};

use super::pods::{crane_push, jsonpath, pause_image, text, wait_until};

/// The release name of the line e2e/release.sh prints; the chart's objects are named after it.
const RELEASE: &str = "registryx-guard";

/// What e2e/release.sh printed: the two pinned references and the commands for users.
struct Printed {
    image: String,
    chart: String,
    verify_lines: Vec<String>,
    install_line: String,
}

impl Printed {
    fn parse(stdout: &str) -> Printed {
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
                .to_owned()
        };
        let verify_lines = stdout
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("cosign verify "))
            .map(str::to_owned)
            .collect();
        // The install line goes on over `\`-continued lines.
        let from = stdout
            .find("helm install ")
            .unwrap_or_else(|| panic!("no helm install line in:\n{stdout}"));
        let install_line = stdout[from..]
            .replace("\\\n", " ")
            .lines()
            .next()
            .unwrap()
            .to_owned();
        Printed {
            image: field("image: "),
            chart: field("chart: "),
            verify_lines,
            install_line,
        }
    }
}

/// `line` as a user runs it in a shell, in `dir` (where cosign.pub is), with the test toolchain first
/// on PATH.
fn shell(line: &str, dir: &Path) -> Output {
    let tools = tool("helm").parent().unwrap().to_owned();
    let path = std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    Command::new("bash")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env("TUF_ROOT", dir.join("tuf"))
        .env("DOCKER_CONFIG", dir.join("docker"))
        .output()
        .unwrap()
}

/// `crane copy` of `from` to `to`: the manifest and its blobs, not the signature (which lives in
/// `from`'s repository under the digest's `.sig` tag).
fn crane_copy(from: &str, to: &str) {
    let output = Command::new(tool("crane"))
        .args(["copy", "--insecure", from, to])
        .output()
        .unwrap();
    assert_success(&format!("crane copy {from} {to}"), &output);
}

/// A printed `cosign verify ...` line run by registryx-guard (the test build) instead.
fn as_registryx_guard(line: &str) -> String {
    line.replacen(
        "cosign verify",
        &format!("{} verify", env!("CARGO_BIN_EXE_registryx-guard")),
        1,
    )
}

/// `registryx-guard verify` (the test build) of `reference` under `policy`: its exit status and output.
fn guard_verify(policy: &Path, reference: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .arg("verify")
        .arg("--policy")
        .arg(policy)
        .arg(reference)
        .output()
        .unwrap();
    (output.status.code(), text(&output))
}

#[test]
fn a_release_installs_from_oci_and_both_signatures_verify() {
    let cluster = ControlPlane::start_for_pods();
    let node = Node::start(&cluster);
    let registry = Registry::distribution_at(&node.ip());
    node.allow_plain_http(&registry.host);
    let cosign = Cosign::with_new_key_pair();
    let keys = cosign.public_key().parent().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let prefix = format!("{}/team", registry.host);

    // 1. make release, against a plain-HTTP registry and with nothing uploaded to a transparency log
    // (no network here), with the test build as the binary (the release build would take minutes).
    let make_release_command = || {
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("e2e/release.sh"))
            .env("REGISTRY", &prefix)
            .env("COSIGN_KEY", cosign.private_key())
            .env("COSIGN_PASSWORD", PASSWORD)
            .env(
                "COSIGN_SIGN_FLAGS",
                "--tlog-upload=false --use-signing-config=false --new-bundle-format=false",
            )
            .env("PLAIN_HTTP", "1")
            .env("BINARY", env!("CARGO_BIN_EXE_registryx-guard"))
            .env("OUT", work.path().join("release"))
            .env(
                "RXG_TOOLS_DIR",
                tool("helm").parent().unwrap().parent().unwrap(),
            )
            .env("HOME", &keys)
            .env("TUF_ROOT", keys.join("tuf"))
            .env("DOCKER_CONFIG", keys.join("docker"));
        command
    };
    let make_release = || make_release_command().output().unwrap();
    // Without REGISTRY, or without the key, it stops before building anything, saying what is missing.
    for (unset, missing) in [
        ("REGISTRY", "set REGISTRY"),
        ("COSIGN_KEY", "no cosign key"),
    ] {
        let mut command = make_release_command();
        command.env_remove(unset).current_dir(work.path());
        let output = command.output().unwrap();
        assert!(
            !output.status.success() && text(&output).contains(missing),
            "e2e/release.sh without {unset}: {}",
            text(&output)
        );
    }
    let first = make_release();
    assert_success("e2e/release.sh", &first);
    // Re-running is safe: the same image digest (a reproducible build), the chart pushed and signed
    // again; what follows checks the second run's chart, the one the version now names.
    let release = make_release();
    assert_success("e2e/release.sh, again", &release);
    let printed = Printed::parse(&String::from_utf8_lossy(&release.stdout));
    assert_eq!(
        Printed::parse(&String::from_utf8_lossy(&first.stdout)).image,
        printed.image,
        "a second release of one binary pushed another image digest"
    );
    println!("{}", String::from_utf8_lossy(&release.stdout));
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        printed
            .image
            .starts_with(&format!("{prefix}/registryx-guard@sha256:")),
        "image {}",
        printed.image
    );
    assert!(
        printed
            .chart
            .starts_with(&format!("{prefix}/charts/registryx-guard@sha256:")),
        "chart {}",
        printed.chart
    );
    assert_eq!(printed.verify_lines.len(), 2, "{:?}", printed.verify_lines);
    assert!(
        printed.verify_lines[0].ends_with(&printed.image)
            && printed.verify_lines[1].ends_with(&printed.chart),
        "{:?}",
        printed.verify_lines
    );

    // 2. Both signatures verify: with the printed `cosign verify` lines, as a user runs them, and with
    // registryx-guard verify itself, under a policy trusting the release key.
    for line in &printed.verify_lines {
        assert_success(line, &shell(line, &keys));
        // The same line with the program's name replaced: cosign's words work for registryx-guard.
        let ours = as_registryx_guard(line);
        assert_success(&ours, &shell(&ours, &keys));
    }
    let policy = work.path().join("release-policy.yaml");
    std::fs::write(
        &policy,
        release_key_policy(
            "release",
            &format!("{}/**", registry.host),
            &cosign.public_key_pem(),
        )
        .yaml(),
    )
    .unwrap();
    for reference in [&printed.image, &printed.chart] {
        let (code, output) = guard_verify(&policy, reference);
        assert_eq!(
            code,
            Some(0),
            "registryx-guard verify {reference}: {output}"
        );
    }

    // 3. An unsigned copy of each (same digest, another repository: the signature stays behind) fails
    // both: the same printed line with the copy's reference, and registryx-guard verify.
    for (line, reference) in printed
        .verify_lines
        .iter()
        .zip([&printed.image, &printed.chart])
    {
        let repository = reference.split('@').next().unwrap();
        let copy = format!(
            "{}/mirror/{}:copy",
            registry.host,
            repository.strip_prefix(&format!("{prefix}/")).unwrap()
        );
        crane_copy(reference, &copy);
        let verified = shell(&line.replace(reference.as_str(), &copy), &keys);
        assert!(
            !verified.status.success() && text(&verified).contains("no signatures found"),
            "cosign verify of the unsigned copy {copy}: {}",
            text(&verified)
        );
        let ours = shell(
            &as_registryx_guard(line).replace(reference.as_str(), &copy),
            &keys,
        );
        assert_eq!(ours.status.code(), Some(1), "{}", text(&ours));
        let (code, output) = guard_verify(&policy, &copy);
        assert_eq!(code, Some(1), "registryx-guard verify {copy}: {output}");
        assert!(output.contains("no signature found"), "{output}");
    }

    // 4. The chart from the registry, with the printed line (the webhook's own policy on, with the
    // release key); the node pulls the pinned image from the registry, so the replicas only become Ready
    // with the signed image the chart pins. `registry.insecure`: this registry speaks plain HTTP.
    assert!(
        printed.install_line.contains(&format!(
            "oci://{prefix}/charts/registryx-guard --version {version} --plain-http"
        )),
        "{}",
        printed.install_line
    );
    let install = format!(
        "{} --set selfPolicy.registry.insecure=true --kubeconfig {} --wait --timeout 180s",
        printed.install_line,
        cluster.kubeconfig.display()
    );
    let installed = shell(&install, &keys);
    assert_success(
        &format!(
            "{install}\n{}\n{}",
            text(&cluster.kubectl(&["get", "pods,events", "-A"])),
            node.logs()
        ),
        &installed,
    );
    let deployment = ["get", "deployment", RELEASE, "-n", NAMESPACE];
    assert_eq!(
        jsonpath(&cluster, &deployment, "{.status.readyReplicas}"),
        "2",
        "two replicas Ready"
    );
    let digest = printed.image.rsplit('@').next().unwrap();
    let pods = ["get", "pods", "-n", NAMESPACE];
    let images = jsonpath(&cluster, &pods, "{.items[*].spec.containers[0].image}");
    let pulled = jsonpath(
        &cluster,
        &pods,
        "{.items[*].status.containerStatuses[0].imageID}",
    );
    for (image, id) in images.split_whitespace().zip(pulled.split_whitespace()) {
        assert_eq!(
            image,
            format!("{prefix}/registryx-guard:{version}@{digest}"),
            "the chart pins the signed image"
        );
        assert!(id.ends_with(digest), "the node ran {id}, not {digest}");
    }

    // 5. The webhook's own policy: Ready, and in an opted-in namespace the signed guard image runs
    // while an unsigned image pushed into the guard's repository is refused, naming the policy.
    let self_policy = format!("{RELEASE}-self");
    wait_until(
        "the self policy to be Ready",
        Duration::from_secs(60),
        || {
            jsonpath(
                &cluster,
                &["get", "isp", &self_policy],
                "{.status.conditions[0].status}",
            ) == "True"
        },
        || text(&cluster.kubectl(&["get", "isp", &self_policy, "-o", "yaml"])),
    );
    assert_success(
        "opt in",
        &cluster.kubectl(&["label", "namespace", "default", "registryx.io/include=true"]),
    );
    let unsigned = format!("{prefix}/registryx-guard:unsigned");
    crane_push(&pause_image(work.path(), "unsigned"), &unsigned);
    let run = |name: &str, image: &str| {
        cluster.kubectl(&[
            "run",
            name,
            "-n",
            "default",
            "--image",
            image,
            "--restart",
            "Never",
            "--",
            "--version",
        ])
    };
    assert_success(
        "the signed guard image is admitted",
        &run("itself", &printed.image),
    );
    wait_until(
        "the signed guard image to run (--version) to completion",
        Duration::from_secs(60),
        || {
            jsonpath(
                &cluster,
                &["get", "pod", "itself", "-n", "default"],
                "{.status.phase}",
            ) == "Succeeded"
        },
        || text(&cluster.kubectl(&["describe", "pod", "itself", "-n", "default"])),
    );
    let refused = run("unsigned", &unsigned);
    assert!(
        !refused.status.success()
            && text(&refused).contains(&format!("policy {self_policy}"))
            && text(&refused).contains("no signature found"),
        "the unsigned image in the guard's repository: {}",
        text(&refused)
    );
    drop(node);
}
