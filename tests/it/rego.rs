//! Rego rules through registryx-guard's own contract: the input document, both Rego syntaxes, RegistryX's
//! policies run unchanged, the deny / violations / allow semantics, errors that name the module and line,
//! the bounds on runaway policies, the example policies under policies/, and RegistryX's REST API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use registryx_guard::registry::registryx::{VulnerabilitySummary, vulnerability_summary};
use registryx_guard::rego::{
    DEFAULT_TIME_LIMIT, MAX_EVAL_DEPTH, RegoAttestation, RegoError, RegoInput, RegoPod, RegoPolicy,
    RegoRequest, RegoSignature, RegoSyntax, RegoUserInfo, Vulnerabilities,
};
use serde_json::json;

const DIGEST: &str = "sha256:9f2c1e5e0c1b4b8d3f6a7e2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";

fn module(name: &str, source: &str) -> (String, String) {
    (name.to_string(), source.to_string())
}

fn compile(source: &str) -> RegoPolicy {
    RegoPolicy::compile(&[module("policy.rego", source)])
        .unwrap_or_else(|e| panic!("does not compile: {e}\n{source}"))
}

fn compile_error(source: &str) -> RegoError {
    match RegoPolicy::compile(&[module("policy.rego", source)]) {
        Ok(_) => panic!("compiled, expected an error:\n{source}"),
        Err(e) => e,
    }
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn example(name: &str) -> RegoPolicy {
    let source = std::fs::read_to_string(policies_dir().join(name)).unwrap();
    RegoPolicy::compile(&[module(name, &source)]).unwrap()
}

/// A signed image in `payments`, as the webhook would describe it.
fn input() -> RegoInput {
    RegoInput {
        image: "registryx.example.com/prod/api:1.4".into(),
        registry: "registryx.example.com".into(),
        repository: "prod/api".into(),
        tag: Some("1.4".into()),
        digest: Some(DIGEST.into()),
        signatures: vec![RegoSignature {
            authority: "release-key".into(),
            verified: true,
            key_id: Some("sha256:0a1b".into()),
            ..RegoSignature::default()
        }],
        vulnerabilities: Some(Vulnerabilities {
            critical: 0,
            high: 2,
            medium: 5,
            low: 9,
            status: "completed".into(),
        }),
        environment: Some("prod".into()),
        namespace: Some("payments".into()),
        user: Some("alice".into()),
        ..RegoInput::default()
    }
}

fn unsigned(mut input: RegoInput) -> RegoInput {
    for signature in &mut input.signatures {
        signature.verified = false;
    }
    input
}

fn with_critical(mut input: RegoInput, critical: u64) -> RegoInput {
    if let Some(v) = input.vulnerabilities.as_mut() {
        v.critical = critical;
    }
    input
}

fn denials(policy: &RegoPolicy, input: &RegoInput) -> Vec<String> {
    policy
        .evaluate(&input.to_value())
        .unwrap_or_else(|e| panic!("evaluation failed: {e}"))
        .denials
}

// ---------------------------------------------------------------------------------------------------
// The input document

#[test]
fn input_document_is_the_contract() {
    let full = RegoInput {
        request: Some(RegoRequest {
            kind: "Pod".into(),
            operation: "CREATE".into(),
            name: Some("api-7d9".into()),
            namespace: Some("payments".into()),
            user_info: RegoUserInfo {
                username: "alice".into(),
                uid: Some("u-1".into()),
                groups: vec!["dev".into()],
                extra: BTreeMap::from([("scopes".into(), vec!["a".into()])]),
            },
        }),
        pod: Some(RegoPod {
            labels: BTreeMap::from([("app".into(), "api".into())]),
            annotations: BTreeMap::new(),
            service_account_name: Some("api".into()),
        }),
        attestations: BTreeMap::from([(
            "https://slsa.dev/provenance/v1".into(),
            vec![RegoAttestation {
                predicate: json!({"runDetails": {"builder": {"id": "https://ci.example/b"}}}),
                signer: "release-key".into(),
                integrated_time: None,
            }],
        )]),
        ..input()
    };
    assert_eq!(
        full.to_value(),
        json!({
            "operation": "pull",
            "image": "registryx.example.com/prod/api:1.4",
            "registry": "registryx.example.com",
            "repository": "prod/api",
            "tag": "1.4",
            "digest": DIGEST,
            "signed": true,
            "is_signed": true,
            "signatures": [{"authority": "release-key", "verified": true, "keyId": "sha256:0a1b",
                            "issuer": null, "subject": null, "rekorIntegratedTime": null}],
            "attestations": {"https://slsa.dev/provenance/v1": [{
                "predicate": {"runDetails": {"builder": {"id": "https://ci.example/b"}}},
                "signer": "release-key", "integratedTime": null}]},
            "vulnerabilities": {"critical": 0, "high": 2, "medium": 5, "low": 9, "status": "completed"},
            "environment": "prod",
            "namespace": "payments",
            "user": "alice",
            "request": {"kind": "Pod", "operation": "CREATE", "name": "api-7d9", "namespace": "payments",
                        "userInfo": {"username": "alice", "uid": "u-1", "groups": ["dev"],
                                     "extra": {"scopes": ["a"]}}},
            "pod": {"labels": {"app": "api"}, "annotations": {}, "serviceAccountName": "api"}
        })
    );
    // Serialize gives the same document.
    assert_eq!(serde_json::to_value(&full).unwrap(), full.to_value());
}

#[test]
fn signed_means_verified_by_registryx_guard() {
    let cases = [
        ("no signatures", vec![], false),
        ("one authority failed", vec![(false, "release-key")], false),
        (
            "one of two verified",
            vec![(false, "release-key"), (true, "ci")],
            true,
        ),
    ];
    for (case, signatures, expected) in cases {
        let doc = RegoInput {
            signatures: signatures
                .into_iter()
                .map(|(verified, authority)| RegoSignature {
                    authority: authority.into(),
                    verified,
                    ..RegoSignature::default()
                })
                .collect(),
            ..input()
        }
        .to_value();
        assert_eq!(doc["signed"], json!(expected), "{case}");
        assert_eq!(doc["is_signed"], json!(expected), "{case}");
    }
}

#[test]
fn unknown_fields_are_null() {
    let doc = RegoInput {
        image: "registry.example.com/app@sha256:00".into(),
        ..RegoInput::default()
    }
    .to_value();
    for field in [
        "tag",
        "digest",
        "vulnerabilities",
        "environment",
        "namespace",
        "user",
        "request",
        "pod",
    ] {
        assert_eq!(doc[field], serde_json::Value::Null, "{field}");
    }
    assert_eq!(doc["operation"], "pull");
    assert_eq!(doc["signed"], false);
}

#[test]
fn environment_comes_from_namespace_labels_then_the_default_then_the_name() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let cases = [
        (
            labels(&[("environment", "prod"), ("env", "x")]),
            None,
            "prod",
        ),
        (labels(&[("env", "staging")]), Some("prod"), "staging"),
        (labels(&[("team", "a")]), None, "payments"),
        (labels(&[("team", "a")]), Some("prod"), "prod"),
        (labels(&[("environment", "")]), Some(""), "payments"),
    ];
    for (labels, default, expected) in cases {
        assert_eq!(
            RegoInput::environment_of(Some("payments"), &labels, default).as_deref(),
            Some(expected)
        );
    }
    // The command line without a namespace: the default, or nothing.
    let none = BTreeMap::new();
    assert_eq!(
        RegoInput::environment_of(None, &none, Some("prod")).as_deref(),
        Some("prod")
    );
    assert_eq!(RegoInput::environment_of(None, &none, None), None);
}

// ---------------------------------------------------------------------------------------------------
// Syntax and semantics

#[test]
fn both_syntaxes_decide_alike() {
    let cases = [
        (
            "v0 partial set",
            "package registry\n\ndeny[msg] {\n  not input.signed\n  msg := \"unsigned\"\n}\n",
        ),
        (
            "v1 contains/if",
            "package registry\n\ndeny contains msg if {\n  not input.signed\n  msg := \"unsigned\"\n}\n",
        ),
        (
            "v1 with import rego.v1",
            "package registry\nimport rego.v1\n\ndeny contains msg if {\n  not input.signed\n  msg := \"unsigned\"\n}\n",
        ),
        (
            "v0 with future keywords",
            "package registry\nimport future.keywords.if\nimport future.keywords.in\n\ndeny[msg] if {\n  not input.signed\n  some s in [1]\n  msg := \"unsigned\"\n}\n",
        ),
        (
            "v0 violations array",
            "package registryx.policy\n\nviolations = [msg | not input.signed; msg := \"unsigned\"]\n",
        ),
        (
            "v1 own package",
            "package registryx_guard\n\ndeny contains \"unsigned\" if not input.signed\n",
        ),
    ];
    for (case, source) in cases {
        let policy = compile(source);
        assert!(policy.has_decision_rules(), "{case}");
        assert_eq!(denials(&policy, &input()), Vec::<String>::new(), "{case}");
        assert_eq!(
            denials(&policy, &unsigned(input())),
            vec!["unsigned"],
            "{case}"
        );
    }
}

#[test]
fn v0_and_v1_modules_mix_in_one_policy() {
    let policy = RegoPolicy::compile(&[
        module(
            "lib.rego",
            "package lib\n\nis_prod if input.environment == \"prod\"\n",
        ),
        module(
            "old.rego",
            "package registry\n\ndeny[msg] {\n  data.lib.is_prod\n  not input.signed\n  msg := \"unsigned in prod\"\n}\n",
        ),
    ])
    .unwrap();
    assert_eq!(
        denials(&policy, &unsigned(input())),
        vec!["unsigned in prod"]
    );
    let staging = RegoInput {
        environment: Some("staging".into()),
        ..unsigned(input())
    };
    assert!(denials(&policy, &staging).is_empty());
}

#[test]
fn registry_guide_module_runs_unchanged() {
    let policy = example("registry-guide.rego");
    assert_eq!(policy.decision_rules(), vec!["data.registry.deny"]);
    assert!(denials(&policy, &input()).is_empty());
    assert_eq!(
        denials(&policy, &unsigned(input())),
        vec!["Only signed images are allowed"]
    );
    let not_a_pull = RegoInput {
        operation: "push".into(),
        ..unsigned(input())
    };
    assert!(denials(&policy, &not_a_pull).is_empty());
}

#[test]
fn registryx_default_module_runs_unchanged() {
    let policy = example("registryx-default.rego");
    assert_eq!(
        policy.decision_rules(),
        vec![
            "data.registryx.policy.violations",
            "data.registryx.policy.allow"
        ]
    );
    // RegistryX's text as its API serves it: a blank first line, tabs, no final newline.
    let text = std::fs::read_to_string(policies_dir().join("registryx-default.rego")).unwrap();
    assert!(
        text.starts_with("\n\t\tpackage registryx.policy\n"),
        "{text:?}"
    );
    assert!(text.ends_with("\t\t}\n\t"), "{text:?}");
    assert!(!text.contains("    "), "re-indented with spaces: {text:?}");

    let critical = "Image has 3 critical vulnerabilities. Blocked in Prod.";
    let unsigned_message = "Image is not signed (cosign signature missing). Blocked in Prod.";
    let allow_false = "policy registryx.policy: allow is false";
    let staging = |input: RegoInput| RegoInput {
        environment: Some("staging".into()),
        ..input
    };
    let cases: [(&str, RegoInput, Vec<&str>); 7] = [
        ("clean and signed", input(), vec![]),
        (
            "critical vulnerabilities",
            with_critical(input(), 3),
            vec![critical, allow_false],
        ),
        (
            "not signed",
            unsigned(input()),
            vec![unsigned_message, allow_false],
        ),
        (
            "both",
            unsigned(with_critical(input(), 3)),
            vec![critical, unsigned_message, allow_false],
        ),
        (
            "no scan known",
            RegoInput {
                vulnerabilities: None,
                ..input()
            },
            vec![],
        ),
        // Its rules fire only in production, as in RegistryX.
        ("not signed, staging", staging(unsigned(input())), vec![]),
        (
            "critical, no environment",
            RegoInput {
                environment: None,
                ..with_critical(input(), 3)
            },
            vec![],
        ),
    ];
    for (case, input, expected) in cases {
        let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        expected.sort();
        assert_eq!(denials(&policy, &input), expected, "{case}");
    }
}

#[test]
fn vulnerability_gate_example() {
    let policy = example("vulnerability-gate.rego");
    let image = "registryx.example.com/prod/api:1.4";
    let staging = |high| RegoInput {
        environment: Some("staging".into()),
        vulnerabilities: Some(Vulnerabilities {
            high,
            status: "completed".into(),
            ..Vulnerabilities::default()
        }),
        ..input()
    };
    let pending = RegoInput {
        vulnerabilities: Some(Vulnerabilities {
            status: "pending".into(),
            ..Vulnerabilities::default()
        }),
        ..input()
    };
    let cases: [(&str, RegoInput, Vec<String>); 6] = [
        (
            "prod with high",
            input(),
            vec![format!(
                "{image} has 2 high vulnerabilities; production admits none"
            )],
        ),
        ("staging under the bar", staging(10), vec![]),
        (
            "staging over the bar",
            staging(11),
            vec![format!(
                "{image} has 11 high vulnerabilities; at most 10 are admitted"
            )],
        ),
        (
            "critical",
            with_critical(staging(0), 1),
            vec![format!("{image} has 1 critical vulnerabilities")],
        ),
        (
            "scan pending",
            pending,
            vec![format!(
                "{image}: RegistryX's scan is pending, not completed"
            )],
        ),
        (
            "no scan",
            RegoInput {
                vulnerabilities: None,
                ..input()
            },
            vec![format!(
                "{image}: RegistryX has no vulnerability scan of this image"
            )],
        ),
    ];
    for (case, input, expected) in cases {
        assert_eq!(denials(&policy, &input), expected, "{case}");
    }
}

#[test]
fn allow_refuses_only_when_defined_and_false() {
    let cases: [(&str, &str, Vec<&str>); 6] = [
        (
            "default true, not overridden",
            "package registryx.policy\ndefault allow = true\nallow = false { input.namespace == \"blocked\" }\n",
            vec![],
        ),
        (
            "default true, overridden to false",
            "package registryx.policy\ndefault allow = true\nallow = false { input.namespace == \"payments\" }\n",
            vec!["policy registryx.policy: allow is false"],
        ),
        (
            "undefined allow",
            "package registry\nallow { input.namespace == \"blocked\" }\n",
            vec![],
        ),
        (
            "default false",
            "package registry\ndefault allow := false\nallow if input.namespace == \"blocked\"\n",
            vec!["policy registry: allow is false"],
        ),
        (
            "allow true",
            "package registryx_guard\nallow := true\n",
            vec![],
        ),
        (
            "allow not a boolean",
            "package registry\nallow := \"yes\"\n",
            vec!["policy registry: allow is \"yes\", not a boolean"],
        ),
    ];
    for (case, source, expected) in cases {
        assert_eq!(denials(&compile(source), &input()), expected, "{case}");
    }
}

#[test]
fn messages_of_every_shape_refuse() {
    let cases: [(&str, &str, Vec<&str>); 7] = [
        (
            "non-string elements",
            "package registry\ndeny contains 42 if true\ndeny contains {\"code\": 7} if true\n",
            vec!["42", "{\"code\":7}"],
        ),
        (
            "duplicates across packages",
            "package registry\ndeny contains \"same\" if true\n",
            vec!["same"],
        ),
        (
            "a lone string",
            "package registry\ndeny := \"refused\"\n",
            vec!["refused"],
        ),
        (
            "true",
            "package registryx_guard\ndeny := true\n",
            vec!["policy registryx_guard: deny is true"],
        ),
        (
            "false and empty refuse nothing",
            "package registry\ndeny := false\nviolations := []\n",
            vec![],
        ),
        (
            "an empty message still refuses",
            "package registry\ndeny contains \"\" if true\n",
            vec!["policy registry: deny has an empty message"],
        ),
        (
            "object keyed by message (v0 `deny[msg] if`)",
            "package registry\nimport future.keywords.if\ndeny[msg] if { msg := \"as object\" }\n",
            vec!["as object"],
        ),
    ];
    for (case, source, expected) in cases {
        assert_eq!(denials(&compile(source), &input()), expected, "{case}");
    }

    // Sorted and deduplicated across packages and rules.
    let policy = RegoPolicy::compile(&[
        module(
            "a.rego",
            "package registry\ndeny contains \"b\" if true\ndeny contains \"a\" if true\n",
        ),
        module(
            "b.rego",
            "package registryx.policy\nviolations contains \"a\" if true\n",
        ),
    ])
    .unwrap();
    assert_eq!(denials(&policy, &input()), vec!["a", "b"]);
}

/// The message of a policy that cannot decide, checked to be that kind of error.
fn undecided(modules: &[(String, String)]) -> String {
    match RegoPolicy::compile(modules) {
        Ok(policy) => panic!(
            "compiled (deciding by {:?}), expected it to be refused as undecided: {modules:?}",
            policy.decision_rules()
        ),
        Err(error @ RegoError::Undecided { .. }) => error.to_string(),
        Err(other) => panic!("refused for another reason: {other:?}"),
    }
}

#[test]
fn other_packages_are_libraries_only() {
    // A deny rule in a package the engine never reads would refuse nothing: refused, not compiled
    // into a policy that admits everything.
    let message = undecided(&[module(
        "policy.rego",
        "package team.rules\ndeny contains \"never read\" if true\n",
    )]);
    assert!(
        message.contains("module \"policy.rego\" is in package team.rules")
            && message.contains("it defines deny"),
        "{message}"
    );
}

/// The shapes of "Rego that can never decide": each was compiled into a Ready policy that
/// admitted every image. Each is refused, naming the module, the package it found and what the engine
/// reads.
#[test]
fn modules_that_define_no_decision_the_engine_reads_are_refused() {
    let reads = "the engine reads only deny, violations and allow in packages registry, registryx.policy and registryx_guard";
    // (module source, what the message must also say)
    let cases = [
        // RegistryX's default module with its package misspelt.
        (
            "package registryx.policies\ndefault allow = true\nviolations[msg] {\n  not input.is_signed\n  msg := \"unsigned\"\n}\nallow = false { count(violations) > 0 }\n",
            vec![
                "is in package registryx.policies",
                "did you mean package registryx.policy?",
                "it defines allow, violations",
            ],
        ),
        // OPA's Kubernetes admission package.
        (
            "package kubernetes.admission\ndeny contains msg if {\n  not input.signed\n  msg := \"unsigned\"\n}\n",
            vec!["is in package kubernetes.admission", "it defines deny"],
        ),
        // The right package, a near-miss rule name.
        (
            "package registry\ndenies contains \"unsigned\" if not input.signed\n",
            vec![
                "is in package registry but defines none of deny, violations and allow",
                "denies (did you mean deny?)",
            ],
        ),
        (
            "package registryx_guard\ndeny_msg contains \"unsigned\" if not input.signed\n",
            vec!["deny_msg (did you mean deny?)"],
        ),
        (
            "package registryx.policy\nviolation[msg] {\n  not input.is_signed\n  msg := \"unsigned\"\n}\n",
            vec!["violation (did you mean violations?)"],
        ),
        // A module with no rule at all decides nothing either.
        (
            "package registry\n",
            vec!["defines none of deny, violations and allow"],
        ),
    ];
    for (source, needles) in cases {
        let message = undecided(&[module("x.rego", source)]);
        assert!(
            message.contains("module \"x.rego\"") && message.contains(reads),
            "{message}"
        );
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in: {message}");
        }
    }

    // Several modules, none deciding: each is named.
    let message = undecided(&[
        module(
            "lib.rego",
            "package lib\nis_prod if input.environment == \"prod\"\n",
        ),
        module(
            "typo.rego",
            "package registryx.policies\nimport data.lib\nviolations contains \"x\" if lib.is_prod\n",
        ),
    ]);
    assert!(
        message.contains("module \"lib.rego\" is in package lib")
            && message.contains("module \"typo.rego\" is in package registryx.policies"),
        "{message}"
    );
}

#[test]
fn a_decision_like_rule_nothing_reads_is_refused_beside_a_deciding_module() {
    // One module decides; another misspells its package or its rule: what it says is never
    // evaluated, and the policy would refuse less than its text says.
    for (source, needle) in [
        (
            "package kubernetes.admission\ndeny contains \"unsigned\" if not input.signed\n",
            "data.kubernetes.admission.deny (module \"second.rego\" line 2: package kubernetes.admission is not read)",
        ),
        (
            "package registry\ndenies contains \"unsigned\" if not input.signed\n",
            "data.registry.denies (module \"second.rego\" line 2: did you mean deny?)",
        ),
        (
            "package registryx.policies\nallowed := false if not input.signed\n",
            "data.registryx.policies.allowed (module \"second.rego\" line 2: package registryx.policies is not read; did you mean allow?)",
        ),
    ] {
        let message = undecided(&[
            module(
                "first.rego",
                "package registryx_guard\ndeny contains \"critical\" if input.vulnerabilities.critical > 0\n",
            ),
            module("second.rego", source),
        ]);
        assert!(
            message.contains(needle) && message.contains("never evaluated"),
            "{needle:?} not in: {message}"
        );
    }
}

#[test]
fn library_modules_that_a_deciding_module_uses_are_accepted() {
    // A library imported by the deciding module, one referred to by its full path, and a library
    // whose rule is named like a decision (`deny_reasons`) but is read through the deciding module:
    // all reached from data.registry.deny, so all evaluated.
    let policy = RegoPolicy::compile(&[
        module(
            "main.rego",
            "package registry\nimport data.team.lib\ndeny contains msg if {\n  lib.is_prod\n  some msg in data.team.checks.deny_reasons\n}\n",
        ),
        module("lib.rego", "package team.lib\nis_prod if input.environment == \"prod\"\n"),
        module(
            "checks.rego",
            "package team.checks\ndeny_reasons contains \"unsigned\" if not input.signed\n",
        ),
    ])
    .unwrap_or_else(|e| panic!("a library must stay accepted: {e}"));
    assert_eq!(policy.decision_rules(), vec!["data.registry.deny"]);
    assert_eq!(denials(&policy, &unsigned(input())), vec!["unsigned"]);
    // An unused helper with an unrelated name is no decision: accepted.
    compile(
        "package registry\nenv := input.environment\nallowed_registries := {\"a\"}\ndeny contains \"x\" if false\n",
    );
}

#[test]
fn evaluations_are_independent() {
    let policy = Arc::new(compile(
        "package registry\ndeny contains msg if { msg := sprintf(\"%s in %s\", [input.image, input.namespace]) }\n",
    ));
    let a = RegoInput {
        image: "a".into(),
        namespace: Some("one".into()),
        ..input()
    };
    let b = RegoInput {
        image: "b".into(),
        namespace: Some("two".into()),
        ..input()
    };
    assert_eq!(denials(&policy, &a), vec!["a in one"]);
    assert_eq!(denials(&policy, &b), vec!["b in two"]);
    assert_eq!(denials(&policy, &a), vec!["a in one"]);

    // From several threads at once, on one compiled policy.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let policy = Arc::clone(&policy);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let image = format!("img-{t}-{i}");
                    let doc = RegoInput {
                        image: image.clone(),
                        namespace: Some("ns".into()),
                        ..input()
                    };
                    assert_eq!(denials(&policy, &doc), vec![format!("{image} in ns")]);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn an_error_leaves_the_policy_usable() {
    let policy =
        compile("package registry\ndeny contains msg if { msg := 10 / input.user_count }\n");
    let broken = json!({"user_count": 0});
    assert!(matches!(
        policy.evaluate(&broken),
        Err(RegoError::Evaluation { .. })
    ));
    assert_eq!(
        policy.evaluate(&json!({"user_count": 5})).unwrap().denials,
        vec!["2"]
    );
}

// ---------------------------------------------------------------------------------------------------
// Errors

#[test]
fn syntax_errors_name_the_module_and_line() {
    let cases = [
        (
            "v0 missing brace",
            "package registry\n\ndeny[msg] {\n  not input.signed\n  msg := \"x\"\n\nallow = true\n",
            RegoSyntax::V0,
        ),
        (
            "v1 bad token",
            "package registry\n\ndeny contains msg if {\n  not input.signed\n  msg := \"x\" +\n}\n",
            RegoSyntax::V1,
        ),
        (
            "v1 typo late",
            "package registryx_guard\n\nok if true\n\ndeny contains msg if {\n  msg := \"x\"\n  input.signed ==\n}\n",
            RegoSyntax::V1,
        ),
    ];
    for (case, source, syntax) in cases {
        let error = RegoPolicy::compile(&[
            module("fine.rego", "package registry\nx := 1\n"),
            module("team/broken.rego", source),
        ])
        .expect_err(case);
        let RegoError::Syntax {
            location,
            message,
            syntax: read_as,
        } = &error
        else {
            panic!("{case}: not a syntax error: {error:?}");
        };
        assert_eq!(location.module, "team/broken.rego", "{case}");
        assert!(location.line.is_some_and(|l| l >= 5), "{case}: {error}");
        assert_eq!(*read_as, syntax, "{case}: {error}");
        let text = error.to_string();
        assert!(
            text.starts_with("module \"team/broken.rego\" line "),
            "{case}: {text}"
        );
        assert!(!text.contains('\n'), "{case}: one line: {text}");
        assert!(!message.is_empty());
    }
}

#[test]
fn a_syntax_error_reports_the_exact_position() {
    let cases = [
        (
            "v0",
            "package registry\n\ndeny[msg] {\n  input.x == 1\n  msg := sprintf(\"a\", [1)\n}\n",
            RegoSyntax::V0,
        ),
        (
            "v1",
            "package registry\n\ndeny contains msg if {\n  input.x == 1\n  msg := sprintf(\"a\", [1)\n}\n",
            RegoSyntax::V1,
        ),
    ];
    for (case, source, syntax) in cases {
        let error = compile_error(source);
        assert_eq!(
            error.to_string(),
            format!(
                "module \"policy.rego\" line 5, column 25: expecting `]` while parsing array (at `msg := sprintf(\"a\", [1)`) (read as {syntax})"
            ),
            "{case}"
        );
    }
    // Where regorus points at the rule rather than the token, the rule's line is reported, as v0.
    let error = compile_error("package registry\n\ndeny[msg] {\n  msg := \n}\n");
    assert!(
        matches!(&error, RegoError::Syntax { location, syntax: RegoSyntax::V0, .. } if location.line == Some(3)),
        "{error:?}"
    );
}

#[test]
fn compile_errors_are_reported() {
    // An unsafe variable: regorus finds it when it prepares the modules.
    let unsafe_var = compile_error("package registry\ndeny contains msg if { x > 1 }\n");
    assert!(
        matches!(
            unsafe_var,
            RegoError::Compile { .. } | RegoError::Syntax { .. }
        ),
        "{unsafe_var:?}"
    );
    assert!(matches!(
        RegoPolicy::compile(&[module("a", "package a\n"), module("a", "package b\n")]),
        Err(RegoError::DuplicateModule { .. })
    ));
    // A decision name that the webhook could not read as one rule.
    let below = compile_error("package registry.deny\nx := 1\n");
    assert!(matches!(below, RegoError::Compile { .. }), "{below:?}");
    let function = compile_error("package registry\ndeny(x) := x\n");
    assert!(
        matches!(function, RegoError::Compile { .. }),
        "{function:?}"
    );
}

#[test]
fn runtime_errors_refuse() {
    let cases = [
        (
            "division by zero",
            "package registry\ndeny contains msg if { msg := sprintf(\"%d\", [1 / 0]) }\n",
        ),
        (
            "type error",
            "package registry\ndeny contains msg if { msg := input.image + 1 }\n",
        ),
        (
            "builtin error is not undefined",
            "package registry\ndeny contains \"bad tag\" if { to_number(input.image) > 1 }\n",
        ),
        (
            "conflicting values",
            "package registryx.policy\nallow := true\nallow := false if true\n",
        ),
    ];
    for (case, source) in cases {
        let error = compile(source)
            .evaluate(&input().to_value())
            .expect_err(case);
        assert!(
            matches!(&error, RegoError::Evaluation { rule, .. } if rule.starts_with("data.")),
            "{case}: {error:?}"
        );
        assert!(!error.to_string().contains('\n'), "{case}: {error}");
    }
}

#[test]
fn a_regorus_panic_is_contained() {
    // regorus's sprintf panics on a non-ASCII digit in a width; the webhook must refuse, not crash.
    let policy =
        compile("package registry\ndeny contains msg if { msg := sprintf(input.user, [1]) }\n");
    let doc = RegoInput {
        user: Some("%\u{b2}d".into()),
        ..input()
    };
    let error = policy.evaluate(&doc.to_value()).expect_err("a refusal");
    assert!(
        matches!(
            error,
            RegoError::Internal { .. } | RegoError::Evaluation { .. }
        ),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Bounds

#[test]
fn a_huge_range_is_a_limit_not_a_hang() {
    let policy = compile(
        "package registry\ndeny contains msg if {\n  n := count([x | some x in numbers.range(1, 100000000)])\n  msg := sprintf(\"%d\", [n])\n}\n",
    );
    let error = policy.evaluate(&input().to_value()).expect_err("a refusal");
    let RegoError::Limit { rule, message } = &error else {
        panic!("not a limit: {error:?}");
    };
    assert_eq!(rule, "data.registry.deny");
    assert!(message.contains("numbers.range"), "{message}");
    assert!(
        message.contains("module \"policy.rego\" line 3"),
        "{message}"
    );

    let step = compile(
        "package registry\ndeny contains \"x\" if { count(numbers.range_step(0, 9000000000000, 2)) > 0 }\n",
    );
    assert!(matches!(
        step.evaluate(&input().to_value()),
        Err(RegoError::Limit { .. })
    ));
    // Ranges within the bound behave as OPA's.
    let fine = compile(
        "package registry\ndeny contains msg if { msg := sprintf(\"%v\", [numbers.range(3, 1)]) }\n",
    );
    assert_eq!(denials(&fine, &input()), vec!["[3, 2, 1]"]);
}

#[test]
fn a_runaway_evaluation_stops_at_the_time_limit() {
    // 10^10 iterations of cheap steps: only the timer can stop this.
    let policy = compile(
        "package registry\ndeny contains \"many\" if {\n  count([1 | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0\n}\n",
    )
    .with_time_limit(Duration::from_millis(50));
    assert_eq!(policy.time_limit(), Duration::from_millis(50));
    let error = policy.evaluate(&input().to_value()).expect_err("a refusal");
    assert_eq!(
        error,
        RegoError::Timeout {
            rule: "data.registry.deny".into(),
            limit: Duration::from_millis(50)
        }
    );
    assert!(error.to_string().contains("time limit of 50ms"), "{error}");
}

#[test]
fn the_timeout_names_the_rule_that_ran_out() {
    // deny is quick and clean; violations runs away. One budget covers the whole evaluation.
    let policy = compile(
        "package registryx.policy\ndefault allow := true\nviolations contains \"many\" if {\n  count([1 | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0\n}\n",
    )
    .with_time_limit(Duration::from_millis(20));
    assert_eq!(
        policy.evaluate(&input().to_value()),
        Err(RegoError::Timeout {
            rule: "data.registryx.policy.violations".into(),
            limit: Duration::from_millis(20)
        })
    );
    assert_eq!(DEFAULT_TIME_LIMIT, Duration::from_millis(100));
    assert_eq!(
        compile("package registry\ndeny contains \"x\" if false\n").time_limit(),
        DEFAULT_TIME_LIMIT
    );
}

#[test]
fn recursion_is_refused_at_compile_time() {
    let cases = [
        (
            "recursive function",
            "package registry\nf(n) := f(n - 1) if n > 0\ndeny contains \"x\" if f(100000)\n",
            "data.registry.f",
        ),
        (
            "mutually recursive functions",
            "package registry\nf(n) := g(n)\ng(n) := f(n)\ndeny contains \"x\" if f(1)\n",
            "data.registry.f",
        ),
        (
            "rule cycle",
            "package registry\na if b\nb if a\ndeny contains \"x\" if a\n",
            "data.registry.a",
        ),
        (
            "through a rule",
            "package registry\nf(x) := r if x > 0\nr := f(1)\n",
            "data.registry.f",
        ),
    ];
    for (case, source, _) in cases {
        let error = compile_error(source);
        let RegoError::Recursion { location, cycle } = &error else {
            panic!("{case}: {error:?}");
        };
        assert_eq!(location.module, "policy.rego", "{case}");
        assert!(
            cycle.len() >= 2 && cycle.first() == cycle.last(),
            "{case}: {cycle:?}"
        );
        assert!(
            error.to_string().contains("Rego forbids recursion"),
            "{error}"
        );
    }
    let error = RegoPolicy::compile(&[
        module(
            "main.rego",
            "package registry\nimport data.lib\ndeny contains m if m := lib.msg\n",
        ),
        module(
            "lib.rego",
            "package lib\nmsg := x if x := data.registry.deny\n",
        ),
    ])
    .expect_err("a cycle across packages");
    assert!(matches!(error, RegoError::Recursion { .. }), "{error:?}");

    // A local variable named like a rule is no reference to it.
    compile(
        "package registry\ntag := normalize(input.tag)\nnormalize(tag) := lower(tag)\ndeny contains tag if false\n",
    );
    compile(
        "package registry\nx := f(2)\nf(x) := x * 2\ndeny contains sprintf(\"%d\", [x]) if true\n",
    );
}

/// Policies of each shape, `n` links long.
fn deep_policy(shape: &str, n: usize) -> String {
    let mut lines = vec!["package registry".to_string()];
    match shape {
        "function chain" => {
            for i in 0..n {
                lines.push(format!("f{i}(x) := f{}(x)", i + 1));
            }
            lines.push(format!("f{n}(x) := x"));
            lines.push("deny contains sprintf(\"%d\", [f0(1)]) if true".into());
        }
        "rule chain" => {
            for i in 0..n {
                lines.push(format!("r{i} := r{}", i + 1));
            }
            lines.push(format!("r{n} := 1"));
            lines.push("deny contains sprintf(\"%d\", [r0]) if true".into());
        }
        "function bodies" => {
            for i in 0..n {
                lines.push(format!(
                    "f{i}(x) := y if {{ some z in [1]; not x == 0; y := f{}(x + z - 1) }}",
                    i + 1
                ));
            }
            lines.push(format!("f{n}(x) := x"));
            lines.push("deny contains sprintf(\"%d\", [f0(1)]) if true".into());
        }
        "nested comprehensions" => {
            for i in 0..n {
                let mut e = format!("f{}(x)", i + 1);
                for j in 0..10 {
                    e = format!("[a{j} | a{j} := {e}]");
                }
                lines.push(format!("f{i}(x) := {e}"));
            }
            lines.push(format!("f{n}(x) := x"));
            lines.push("deny contains sprintf(\"%d\", [count(f0(1))]) if true".into());
        }
        "every and with" => {
            for i in 0..n {
                lines.push(format!(
                    "r{i} if {{ every v in [1] {{ v > 0; r{} with input.level as v }} }}",
                    i + 1
                ));
            }
            lines.push(format!("r{n} if input.level > 0"));
            lines.push("deny contains \"deep\" if r0".into());
        }
        "objects and sets" => {
            for i in 0..n {
                lines.push(format!(
                    "f{i}(x) := {{k: v | some k in {{\"a\"}}; v := {{f{}(x)}} | {{1}}}}",
                    i + 1
                ));
            }
            lines.push(format!("f{n}(x) := x"));
            lines.push("deny contains sprintf(\"%v\", [count(f0(1))]) if true".into());
        }
        "arithmetic" => {
            let sum = " + 1".repeat(n);
            // Split across lines: regorus limits a line to 1024 columns.
            let sum = sum.replace(" + 1 + 1 + 1 + 1 + 1", " + 1 + 1 + 1 + 1 + 1\n");
            lines.push(format!("total := 0{sum}"));
            lines.push("deny contains sprintf(\"%d\", [total]) if true".into());
        }
        "conditions" => {
            let chain = " == true"
                .repeat(n)
                .replace(" == true == true", " == true == true\n");
            lines.push(format!("c if {{ true{chain} }}"));
            lines.push("deny contains \"c\" if c".into());
        }
        other => panic!("unknown shape {other}"),
    }
    lines.join("\n") + "\n"
}

/// The longest `n` of `shape` that compiles (compilation is monotonic in `n`).
fn deepest_accepted(shape: &str) -> usize {
    let (mut ok, mut too_deep) = (1usize, 4096usize);
    assert!(
        RegoPolicy::compile(&[module("deep.rego", &deep_policy(shape, ok))]).is_ok(),
        "{shape} of 1 does not compile"
    );
    match RegoPolicy::compile(&[module("deep.rego", &deep_policy(shape, too_deep))]) {
        Err(RegoError::TooDeep { .. }) => {}
        other => panic!("{shape} of {too_deep}: {other:?}"),
    }
    while too_deep - ok > 1 {
        let mid = (ok + too_deep) / 2;
        match RegoPolicy::compile(&[module("deep.rego", &deep_policy(shape, mid))]) {
            Ok(_) => ok = mid,
            Err(RegoError::TooDeep { .. }) => too_deep = mid,
            Err(e) => panic!("{shape} of {mid}: {e}"),
        }
    }
    ok
}

#[test]
fn the_deepest_accepted_policies_run_on_half_a_tokio_worker_stack() {
    // The point of the nesting bound: whatever compiles, compiles and evaluates on a tokio worker's
    // 2 MiB stack, here with half of it, leaving the other half to the webhook's own frames. A stack
    // overflow aborts this test binary, which is the failure this guards against.
    for shape in [
        "function chain",
        "rule chain",
        "function bodies",
        "nested comprehensions",
        "every and with",
        "objects and sets",
        "arithmetic",
        "conditions",
    ] {
        let n = deepest_accepted(shape);
        let source = deep_policy(shape, n);
        let outcome = std::thread::Builder::new()
            .name(format!("{shape} x{n}"))
            .stack_size(1 << 20)
            .spawn(move || {
                let policy = RegoPolicy::compile(&[module("deep.rego", &source)])?
                    .with_time_limit(Duration::from_secs(30));
                policy.evaluate(&input().to_value())
            })
            .unwrap()
            .join()
            .unwrap();
        let decision = outcome.unwrap_or_else(|e| panic!("{shape} x{n}: {e}"));
        assert!(!decision.allowed(), "{shape} x{n}");
        eprintln!("{shape}: {n} links accepted (limit {MAX_EVAL_DEPTH}) and evaluated");
    }
}

#[test]
fn too_deep_is_reported_with_the_rule() {
    let error = compile_error(&deep_policy("function chain", 1000));
    let RegoError::TooDeep {
        location,
        rule,
        depth,
        limit,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(location.module, "policy.rego");
    assert!(rule.starts_with("data.registry."), "{rule}");
    assert!(depth > limit);
}

// ---------------------------------------------------------------------------------------------------
// The example policies

#[test]
fn every_example_rego_module_compiles() {
    let mut count = 0;
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rego") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let source = std::fs::read_to_string(&path).unwrap();
            let policy = RegoPolicy::compile(&[module(&name, &source)])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(policy.has_decision_rules(), "{name} decides nothing");
            count += 1;
        }
    }
    assert!(count >= 3, "only {count} .rego files");
}

#[test]
fn every_example_policy_parses_and_its_rego_compiles() {
    let mut count = 0;
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            yaml["apiVersion"].as_str(),
            Some("registryx.io/v1alpha1"),
            "{name}"
        );
        assert_eq!(yaml["kind"].as_str(), Some("ImageSigningPolicy"), "{name}");
        // registryx-guard's own loader reads it as the typed resource (enums, required fields).
        let mut loaded =
            registryx_guard::policy::load_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.len(), 1, "{name}");
        let policy = loaded.remove(0);
        assert!(!policy.spec.images.is_empty(), "{name}");
        if let Some(rego) = &policy.spec.rego {
            let modules: Vec<(String, String)> = rego
                .modules
                .iter()
                .map(|m| (m.name.clone(), m.source.clone()))
                .collect();
            let compiled = RegoPolicy::compile(&modules).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(compiled.has_decision_rules(), "{name}");
            // An embedded module named after a file in policies/ is that file, unchanged.
            for (module_name, source) in &modules {
                let file = policies_dir().join(module_name);
                if file.exists() {
                    assert_eq!(
                        source,
                        &std::fs::read_to_string(&file).unwrap(),
                        "{name}: module {module_name} differs from policies/{module_name}"
                    );
                }
            }
        }
        count += 1;
    }
    assert!(count >= 6, "only {count} YAML policies");
}

// ---------------------------------------------------------------------------------------------------
// RegistryX's REST API (a fake built from its documented shapes)

async fn manifest_details(
    UrlPath((name, digest)): UrlPath<(String, String)>,
) -> axum::response::Response {
    let vulnerabilities = match name.as_str() {
        "prod/api" => {
            json!({"status": "completed", "critical": 1, "high": 2, "medium": 3, "low": 4,
                             "high_priority": 3})
        }
        "prod/pending" => {
            json!({"status": "pending", "critical": null, "high": null, "medium": null,
                                 "low": null, "high_priority": null})
        }
        "prod/unscanned" => serde_json::Value::Null,
        "prod/broken" => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "database is down").into_response();
        }
        "prod/liar" => {
            return axum::Json(json!({"digest": "sha256:other", "vulnerabilities": null}))
                .into_response();
        }
        "prod/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            serde_json::Value::Null
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "manifest not found"})),
            )
                .into_response();
        }
    };
    // RegistryX claims isSigned for any scanned image; nothing here is signed.
    axum::Json(json!({
        "digest": digest,
        "size": 1234,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "vulnerabilities": vulnerabilities,
        "isSigned": true,
        "healthScore": 87
    }))
    .into_response()
}

async fn fake_registryx() -> String {
    // RegistryX routes `<name>` with slashes in it; a catch-all stands in for that router.
    let app = Router::new().route(
        "/api/v1/repositories/{*rest}",
        get(|UrlPath(rest): UrlPath<String>| async move {
            match rest.rsplit_once("/manifests/") {
                Some((name, digest)) => {
                    manifest_details(UrlPath((name.to_string(), digest.to_string()))).await
                }
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test]
async fn vulnerabilities_come_from_registryx_and_its_signed_flag_is_ignored() {
    let base = fake_registryx().await;
    let http = reqwest::Client::new();
    let timeout = Duration::from_secs(2);

    let found = vulnerability_summary(&http, &base, "prod/api", DIGEST, timeout)
        .await
        .unwrap();
    assert_eq!(
        found,
        Some(VulnerabilitySummary {
            critical: 1,
            high: 2,
            medium: 3,
            low: 4,
            status: "completed".into()
        })
    );

    // RegistryX says isSigned: true; registryx-guard verified nothing, so the image is unsigned, and
    // the guide's rule refuses it.
    let doc = RegoInput {
        vulnerabilities: found.map(Into::into),
        ..unsigned(input())
    };
    assert_eq!(doc.to_value()["signed"], false);
    assert_eq!(doc.to_value()["is_signed"], false);
    assert_eq!(
        denials(&example("registry-guide.rego"), &doc),
        vec!["Only signed images are allowed"]
    );
    assert!(!denials(&example("registryx-default.rego"), &doc).is_empty());

    let pending = vulnerability_summary(&http, &base, "prod/pending", DIGEST, timeout)
        .await
        .unwrap();
    assert_eq!(
        pending,
        Some(VulnerabilitySummary {
            status: "pending".into(),
            ..VulnerabilitySummary::default()
        })
    );
    assert_eq!(
        vulnerability_summary(&http, &base, "prod/unscanned", DIGEST, timeout).await,
        Ok(None)
    );
    assert_eq!(
        vulnerability_summary(&http, &base, "prod/unknown", DIGEST, timeout).await,
        Ok(None)
    );

    let error = vulnerability_summary(&http, &base, "prod/broken", DIGEST, timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("/api/v1/repositories/prod/broken/manifests/"),
        "{error}"
    );
    // The status, never the server's own words (a refusal does not quote a foreign body).
    assert!(
        error.contains("500") && !error.contains("database is down"),
        "{error}"
    );

    let error = vulnerability_summary(&http, &base, "prod/liar", DIGEST, timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sha256:other"), "{error}");

    let error = vulnerability_summary(
        &http,
        &base,
        "prod/slow",
        DIGEST,
        Duration::from_millis(200),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("no answer within 200ms"), "{error}");

    let error = vulnerability_summary(&http, &base, "prod/../admin", DIGEST, timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a repository name"), "{error}");
}

/// [`input`] with one verified attestation of `predicate_type` by `release-key`.
fn attested(predicate_type: &str, predicate: serde_json::Value) -> RegoInput {
    RegoInput {
        attestations: BTreeMap::from([(
            predicate_type.to_owned(),
            vec![RegoAttestation {
                predicate,
                signer: "release-key".into(),
                integrated_time: None,
            }],
        )]),
        ..input()
    }
}

#[test]
fn slsa_provenance_example_checks_builder_and_source() {
    let policy = example("slsa-provenance.rego");
    let with = |builder: &str, source: &str| {
        attested(
            "https://slsa.dev/provenance/v1",
            json!({
                "buildDefinition": {"externalParameters": {"workflow": {"repository": source}}},
                "runDetails": {"builder": {"id": builder}},
            }),
        )
    };
    let release = "https://github.com/acme/.github/workflows/release.yml@refs/heads/main";
    assert_eq!(
        denials(&policy, &with(release, "https://github.com/acme/app")),
        Vec::<String>::new()
    );
    let other_builder = denials(
        &policy,
        &with("https://evil.example/b", "https://github.com/acme/app"),
    );
    assert!(
        other_builder
            .iter()
            .any(|d| d.contains("not by the release workflow")),
        "{other_builder:?}"
    );
    let other_source = denials(&policy, &with(release, "https://github.com/evil/app"));
    assert!(
        other_source
            .iter()
            .any(|d| d.contains("not from https://github.com/acme/app")),
        "{other_source:?}"
    );
    let none = denials(&policy, &input());
    assert!(
        none.iter()
            .any(|d| d.contains("no verified SLSA v1 provenance")),
        "{none:?}"
    );
}

#[test]
fn vuln_attestation_example_wants_a_recent_scan_without_criticals() {
    let policy = example("vuln-attestation.rego");
    let scan = |finished: &str, severity: &str| {
        attested(
            "https://cosign.sigstore.dev/attestation/vuln/v1",
            json!({
                "scanner": {"uri": "pkg:github/aquasecurity/trivy", "result": {"Results": [
                    {"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": severity}]}
                ]}},
                "metadata": {"scanFinishedOn": finished},
            }),
        )
    };
    let rfc3339 = |ago: time::Duration| {
        (time::OffsetDateTime::now_utc() - ago)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let fresh = rfc3339(time::Duration::hours(1));
    let stale = rfc3339(time::Duration::days(8));
    assert_eq!(
        denials(&policy, &scan(&fresh, "HIGH")),
        Vec::<String>::new()
    );
    assert_eq!(denials(&policy, &scan(&fresh, "CRITICAL")).len(), 1);
    assert_eq!(denials(&policy, &scan(&stale, "HIGH")).len(), 1);
    assert_eq!(denials(&policy, &input()).len(), 1);
}
