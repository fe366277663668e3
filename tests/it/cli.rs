//! The command line as a user meets it: help, version, exit codes, and crdgen's output.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .args(args)
        .env_remove("RXG_POLICY")
        .output()
        .expect("run registryx-guard")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_names_the_crate_version() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output).trim(),
        format!("registryx-guard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_subcommand_explains_itself_and_its_environment_variables() {
    for (subcommand, needles) in [
        (
            "serve",
            &[
                "--listen",
                "RXG_LISTEN",
                "--tls-cert",
                "--policy-dir",
                "--unmatched",
                "RXG_UNMATCHED",
                "--policy-reports",
            ][..],
        ),
        (
            "verify",
            &["--policy", "RXG_POLICY", "--output", "Exit status"][..],
        ),
        (
            "crdgen",
            &["--output", "RXG_CRDGEN_OUTPUT", "--policy-reports"][..],
        ),
    ] {
        let output = run(&[subcommand, "--help"]);
        assert!(output.status.success(), "{subcommand} --help failed");
        let help = stdout(&output);
        for needle in needles {
            assert!(
                help.contains(needle),
                "`{subcommand} --help` does not mention {needle}:\n{help}"
            );
        }
    }
}

#[test]
fn a_bad_flag_and_a_missing_policy_file_are_usage_errors() {
    let output = run(&["verify", "registry.example/app:1", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    let output = run(&[
        "verify",
        "registry.example/app:1",
        "--policy",
        "/nonexistent/policy.yaml",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/policy.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_invalid_policy_file_is_a_usage_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: b}\nspec: {images: 3}\n").unwrap();
    let output = run(&[
        "verify",
        "registry.example/app:1",
        "--policy",
        path.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("broken.yaml") && message.contains("not a valid ImageSigningPolicy"),
        "{message}"
    );
}

#[test]
fn crdgen_prints_the_committed_crd() {
    let output = run(&["crdgen"]);
    assert!(output.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/imagesigningpolicies.registryx.io.yaml"
    ))
    .unwrap();
    assert!(
        stdout(&output) == committed,
        "crds/ is stale: run `make crds`"
    );
}

#[test]
fn crdgen_prints_the_committed_policy_report_crds_and_the_chart_holds_them_behind_its_switch() {
    let output = run(&["crdgen", "--policy-reports"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/policyreports.wgpolicyk8s.io.yaml"
    ))
    .unwrap();
    assert!(printed == committed, "crds/ is stale: run `make crds`");
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/registryx-guard/templates/policyreports-crd.yaml"
    ))
    .unwrap();
    assert_eq!(
        template,
        format!("{{{{- if .Values.audit.policyReports.installCRD }}}}\n{printed}{{{{- end }}}}\n"),
        "the chart's copy is stale: run `make crds`"
    );
    for needle in [
        "name: policyreports.wgpolicyk8s.io",
        "name: clusterpolicyreports.wgpolicyk8s.io",
        "- polr",
        "- cpolr",
        "name: v1alpha2",
        "jsonPath: .summary.fail",
    ] {
        assert!(printed.contains(needle), "no {needle:?} in:\n{printed}");
    }
}

#[test]
fn serve_with_a_policy_dir_is_ready_and_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let pem = rcgen::KeyPair::generate()
        .unwrap()
        .public_key_pem()
        .replace('\n', "\n        ");
    crate::support::serve_files(
        dir.path(),
        &format!(
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: from-dir}}\nspec:\n  images: ['r.example/**']\n  \
             authorities:\n  - name: k\n    key:\n      data: |\n        {pem}\n"
        ),
    );
    let (port, https) = (crate::support::free_port(), crate::support::free_port());
    let child = crate::support::serve_command(dir.path(), port, https)
        .args(["--log-format", "json", "--shutdown-delay-seconds", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let mut ready = None;
    for _ in 0..100 {
        if let Ok(response) = client.get(url("/readyz")).send() {
            ready = Some(response.status().as_u16());
            if ready == Some(200) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let metrics = client
        .get(url("/metrics"))
        .send()
        .map(|r| r.text().unwrap_or_default())
        .unwrap_or_default();
    // One review, of a pod whose image no policy governs: refused, and logged as a decision.
    let review = crate::support::pod_create_review(&[("app", "elsewhere.example/app:1")]);
    let answered = crate::support::post_validate(https, &review);
    // SIGTERM, not SIGKILL: the decision line is written by the log's background thread, and only a
    // graceful exit waits for it (a kill lost it in about one run of three).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    assert_eq!(ready, Some(200), "not ready: {}", stderr(&output));
    for line in [
        "registryx_guard_verification_cache_lookups_total{result=\"hit\"} 0",
        "registryx_guard_verification_cache_lookups_total{result=\"miss\"} 0",
        "registryx_guard_policies{ready=\"true\"} 1",
        "registryx_guard_policies{ready=\"false\"} 0",
        "registryx_guard_policy_reconciles_total 1",
        "registryx_guard_push_events_received_total 0",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let logs = stderr(&output);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["policy"] == "from-dir"),
        "{logs}"
    );
    let answered = answered.expect("the review is answered");
    assert_eq!(answered["response"]["allowed"], false, "{answered}");
    // The decision log carries the decisions as JSON objects, not as a string of JSON.
    let decision = lines
        .iter()
        .find(|l| l["message"] == "admission decision")
        .unwrap_or_else(|| panic!("no decision logged: {logs}"));
    assert_eq!(
        decision["decisions"][0]["image"], "elsewhere.example/app:1",
        "{decision}"
    );
    assert_eq!(decision["decisions"][0]["admitted"], false, "{decision}");
    assert!(
        decision["decisions"][0]["refusal"].is_string(),
        "{decision}"
    );
    assert_eq!(decision["decisions_omitted"], 0, "{decision}");
    assert_eq!(decision["allowed"], false, "{decision}");
    assert_eq!(decision["span"]["kind"], "Pod", "{decision}");
}

#[test]
fn serve_refuses_to_start_with_a_missing_policy_folder() {
    let output = Command::new(env!("CARGO_BIN_EXE_registryx-guard"))
        .args(["serve", "--policy-dir", "/nonexistent-policies"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent-policies"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_policy_file_rewritten_in_place_is_never_published_half_written() {
    // A writer that truncates p.yaml and writes the new policy a line at a time, as a script echoing
    // lines or `cat > p.yaml` from a slow pipe does: every prefix of whole lines parses (no policy at
    // all, then one with no authority yet), and publishing one would refuse the images it governs.
    let dir = tempfile::tempdir().unwrap();
    let policy = |name: &str, host: &str| {
        format!(
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: {name}}}\nspec:\n  images: ['{host}/**']\n  mutateDigest: false\n  signatureRequired: false\n"
        )
    };
    let policies = crate::support::serve_files(dir.path(), &policy("first", "a.example"));
    let (port, https) = (crate::support::free_port(), crate::support::free_port());
    let mut child = crate::support::serve_command(dir.path(), port, https)
        .env("RXG_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let metrics = || {
        client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    let published = |text: &str| {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        (
            value("registryx_guard_policies{ready=\"true\"}"),
            value("registryx_guard_policies{ready=\"false\"}"),
            value("registryx_guard_policy_reconciles_total"),
        )
    };
    let start = std::time::Instant::now();
    while published(&metrics()).0 != Some(1) {
        assert!(start.elapsed().as_secs() < 20, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = published(&metrics()).2.unwrap();

    let text = policy("second", "b.example");
    let writer = {
        let path = policies.join("p.yaml");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut file = std::fs::File::create(path).unwrap();
            for line in text.split_inclusive('\n') {
                std::thread::sleep(std::time::Duration::from_millis(150));
                file.write_all(line.as_bytes()).unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        seen.push(published(&metrics()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.join().unwrap();
    let start = std::time::Instant::now();
    let after = loop {
        let now = published(&metrics());
        if now.2 > Some(before) || start.elapsed().as_secs() > 10 {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    for (ready, not_ready, _) in &seen {
        assert_eq!(
            (*ready, *not_ready),
            (Some(1), Some(0)),
            "a half-written file was published: {seen:?}"
        );
    }
    assert_eq!(
        after,
        (Some(1), Some(0), Some(before + 1)),
        "the finished file was not published once: {seen:?}"
    );
}

/// Colour codes only on a terminal, and never with NO_COLOR: `verify`'s log of a registry that does not
/// answer, read from a pipe, from a pseudo-terminal (`script`), and from one with NO_COLOR=1.
#[test]
fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let pem = rcgen::KeyPair::generate()
        .unwrap()
        .public_key_pem()
        .replace('\n', "\n        ");
    let closed = crate::support::free_port();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {{name: p}}\nspec:\n  images: ['127.0.0.1:{closed}/**']\n  \
             authorities:\n  - name: k\n    key:\n      data: |\n        {pem}\n"
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_registryx-guard");
    let image = format!("127.0.0.1:{closed}/app:1");
    let args = ["verify", "--policy", policy.to_str().unwrap(), &image];
    let output = Command::new(binary).args(args).output().unwrap();
    let piped = stderr(&output);
    // The log names the URL tried, port included.
    let tried = format!("registry connection failed url=\"https://127.0.0.1:{closed}/v2/app/");
    assert!(piped.contains(&tried), "{piped}");
    assert!(
        !piped.contains('\u{1b}'),
        "colour codes in a pipe: {piped:?}"
    );
    // The refusal points at the log this command wrote, not at a webhook's.
    let refusal = stdout(&output);
    assert!(refusal.contains("verify's stderr"), "{refusal}");

    let on_terminal = |no_color: Option<&str>| {
        let command = std::iter::once(binary)
            .chain(args)
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        script.args(["-qec", &command, "/dev/null"]);
        script.env_remove("NO_COLOR");
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        String::from_utf8_lossy(&script.output().unwrap().stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(
        coloured.contains("registry connection failed"),
        "{coloured}"
    );
    assert!(
        coloured.contains("\u{1b}["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_terminal(Some("1"));
    assert!(plain.contains("registry connection failed"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}
