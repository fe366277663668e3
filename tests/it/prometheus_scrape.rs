//! A real Prometheus (Debian's, from `make tools`) scrapes a running `registryx-guard serve` with the
//! chart's alert rules loaded: the series the rules are written against are the ones a scrape gives
//! (names, labels, the `registryx-guard` job), and every shipped rule evaluates against them without
//! error. tests/alerts/ tests the rules' logic on synthetic series with promtool; this is the other half.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::policy::PolicySpec;
use crate::support::process::{Process, http_ok};
use crate::support::{free_port, pod_create_review, post_validate, repo_root, serve_command, tool};

/// The chart's rule file, as the PrometheusRule ships it (make alerts-check holds the two equal).
const RULES: &str = "charts/registryx-guard/files/alerts.yaml";

#[test]
fn prometheus_scrapes_a_refusal_and_loads_every_shipped_alert() {
    let dir = tempfile::tempdir().unwrap();
    // A Ready policy over r.example (a key it never needs: no image of r.example is reviewed).
    let pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
    crate::support::serve_files(
        dir.path(),
        &PolicySpec::key("r.example", &pem)
            .named("team-signed")
            .yaml(),
    );
    let (probes, https) = (free_port(), free_port());
    let mut server = Process::start(
        "registryx-guard",
        serve_command(dir.path(), probes, https),
        dir.path(),
    );
    server.wait_until("ready", Duration::from_secs(30), || {
        http_ok(&format!("http://127.0.0.1:{probes}/readyz"))
    });

    // One refusal: an image that no policy governs (unmatched images are refused by default), so no
    // registry is involved and the reason is no_policy.
    let review = pod_create_review(&[("app", "elsewhere.example/app:1")]);
    let answer = post_validate(https, &review).expect("the review is answered");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");

    let port = free_port();
    let rules = repo_root().join(RULES);
    let config = dir.path().join("prometheus.yml");
    // The job name the rules select, as the chart's ServiceMonitor names it (jobLabel).
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  \
             - job_name: registryx-guard\n    static_configs: [{{targets: ['127.0.0.1:{probes}']}}]\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(tool("prometheus"));
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let mut prometheus = Process::start("prometheus", command, dir.path());
    prometheus.wait_until("ready", Duration::from_secs(60), || {
        http_ok(&format!("http://127.0.0.1:{port}/-/ready"))
    });
    let api = Api(port);

    // The refusal, as Prometheus stored it from the scrape: the labels the rules aggregate by.
    let refusals =
        r#"registryx_guard_admission_decisions_total{decision="deny", reason="no_policy"}"#;
    let found = prometheus_until(&prometheus, "scraped the refusal", || {
        let result = api.query(refusals);
        let up = api.query(r#"up{job="registryx-guard"}"#);
        match (value_of(&result), value_of(&up)) {
            (Some("1"), Some("1")) => Ok(result),
            _ => Err(format!("{refusals}: {result:?}, up: {up:?}")),
        }
    });
    let metric = &found[0]["metric"];
    assert_eq!(metric["policy"], "none", "{found:?}");
    assert_eq!(metric["job"], "registryx-guard", "{found:?}");
    assert_eq!(
        metric["instance"],
        format!("127.0.0.1:{probes}"),
        "{found:?}"
    );
    // The policy is Ready: the series PolicyNotReady reads says so.
    assert_eq!(
        value_of(&api.query(r#"registryx_guard_policies{ready="false"}"#)),
        Some("0")
    );

    // Every rule of the file is loaded and has been evaluated on these series without error; a healthy
    // server, up and Ready with its policy compiled and one refusal, leaves the webhook's and the policies'
    // alerts quiet.
    let shipped = shipped_alerts();
    let loaded = prometheus_until(&prometheus, "evaluated every rule", || {
        let loaded = api.rules();
        let evaluated = loaded.len() == shipped.values().sum::<usize>()
            && loaded.iter().all(|rule| rule["health"] == "ok");
        let quiet = [
            "RegistryXGuardWebhookUnavailable",
            "RegistryXGuardPolicyNotReady",
        ]
        .iter()
        .all(|name| {
            loaded
                .iter()
                .any(|rule| rule["name"] == *name && rule["state"] == "inactive")
        });
        if evaluated && quiet {
            Ok(loaded)
        } else {
            Err(format!("{loaded:?}"))
        }
    });
    let mut counted = BTreeMap::new();
    for rule in &loaded {
        assert_eq!(rule["type"], "alerting", "{rule}");
        assert_eq!(rule["lastError"].as_str().unwrap_or(""), "", "{rule}");
        *counted
            .entry(rule["name"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(counted, shipped, "the rules Prometheus loaded from {RULES}");

    // Both processes end here (Process kills and reaps its child when dropped); the tempdir goes after.
    drop(prometheus);
    drop(server);
}

/// Prometheus's HTTP API on a loopback port.
struct Api(u16);

impl Api {
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url =
            reqwest::Url::parse_with_params(&format!("http://127.0.0.1:{}{path}", self.0), params)
                .unwrap();
        let answer: Value = reqwest::blocking::get(url)
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(answer["status"], "success", "{path}: {answer}");
        answer["data"].clone()
    }

    /// The instant vector of `query`, now.
    fn query(&self, query: &str) -> Vec<Value> {
        let data = self.get("/api/v1/query", &[("query", query)]);
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every rule of every loaded group.
    fn rules(&self) -> Vec<Value> {
        let data = self.get("/api/v1/rules", &[]);
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// The value of a one-element instant vector, as Prometheus writes it ("1").
fn value_of(result: &[Value]) -> Option<&str> {
    match result {
        [one] => one["value"][1].as_str(),
        _ => None,
    }
}

/// The alerts of the rule file, by name, with how many rules carry each name.
fn shipped_alerts() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = BTreeMap::new();
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("only alerting rules");
            *alerts.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    assert!(alerts.len() >= 5, "{alerts:?}");
    alerts
}

/// Polls `check` until it gives a value, failing after 30 s with what it last saw and Prometheus's log.
/// (The scrape and evaluation interval is 1 s; a request to a Prometheus that exited fails at once.)
fn prometheus_until<T>(
    prometheus: &Process,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(found) => return found,
            Err(seen) if start.elapsed() > Duration::from_secs(30) => panic!(
                "Prometheus has not {what} after 30 s; last seen: {seen}\n{}",
                prometheus.log_tail()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
