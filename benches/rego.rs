//! Rego evaluations per second (BENCHMARKS.md, section 3): the example modules of policies/ compiled
//! once with `RegoPolicy::compile`, then `RegoPolicy::evaluate` on the input document of one signed
//! image, as the webhook evaluates it for each (image, policy). Compilation is measured too, since a
//! policy change recompiles.
//!
//! `cargo bench --bench rego`; `cargo test --all-targets` runs each function once (criterion's test mode).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use registryx_guard::rego::{
    RegoInput, RegoPod, RegoPolicy, RegoRequest, RegoSignature, RegoUserInfo, Vulnerabilities,
};

/// The modules of policies/, one policy each.
const MODULES: [&str; 3] = [
    "registry-guide.rego",
    "registryx-default.rego",
    "vulnerability-gate.rego",
];

fn module(name: &str) -> (String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (name.to_owned(), source)
}

/// The input of a signed image of a production Pod, with a completed scan: every rule is evaluated
/// and none denies, the common case on the admission path.
fn input() -> serde_json::Value {
    RegoInput {
        image: "registryx.example.com/prod/api:1.4".into(),
        registry: "registryx.example.com".into(),
        repository: "prod/api".into(),
        tag: Some("1.4".into()),
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        signatures: vec![RegoSignature {
            authority: "release-key".into(),
            verified: true,
            key_id: Some(format!("sha256:{}", "cd".repeat(32))),
            ..RegoSignature::default()
        }],
        vulnerabilities: Some(Vulnerabilities {
            critical: 0,
            high: 0,
            medium: 5,
            low: 9,
            status: "completed".into(),
        }),
        environment: Some("prod".into()),
        namespace: Some("payments".into()),
        user: Some("alice".into()),
        request: Some(RegoRequest {
            kind: "Pod".into(),
            operation: "CREATE".into(),
            name: Some("api-7d9".into()),
            namespace: Some("payments".into()),
            user_info: RegoUserInfo {
                username: "alice".into(),
                groups: vec!["system:authenticated".into()],
                ..RegoUserInfo::default()
            },
        }),
        pod: Some(RegoPod {
            service_account_name: Some("api".into()),
            ..RegoPod::default()
        }),
        ..RegoInput::default()
    }
    .to_value()
}

fn rego(c: &mut Criterion) {
    let input = input();
    let mut evaluate = c.benchmark_group("rego/evaluate");
    for name in MODULES {
        let policy = RegoPolicy::compile(&[module(name)])
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        let decision = policy.evaluate(&input).expect("evaluate");
        assert!(
            decision.allowed(),
            "{name} refuses the bench input: {decision:?}"
        );
        evaluate.bench_function(name, |b| {
            b.iter(|| policy.evaluate(black_box(&input)).expect("evaluate"))
        });
    }
    let all: Vec<_> = MODULES.iter().map(|name| module(name)).collect();
    let policy = RegoPolicy::compile(&all).expect("the three modules compile together");
    evaluate.bench_function("all three modules", |b| {
        b.iter(|| policy.evaluate(black_box(&input)).expect("evaluate"))
    });
    evaluate.finish();

    let mut compile = c.benchmark_group("rego/compile");
    compile.bench_function("all three modules", |b| {
        b.iter(|| RegoPolicy::compile(black_box(&all)).expect("compile"))
    });
    compile.finish();
}

criterion_group!(benches, rego);
criterion_main!(benches);
