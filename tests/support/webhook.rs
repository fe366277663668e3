//! The real `registryx-guard serve` process for one test: a self-signed certificate, a policy folder,
//! free loopback ports; ready once `/readyz` answers 200; killed when dropped.

use std::process::Child;
use std::time::{Duration, Instant};

pub struct Webhook {
    child: Child,
    pub https: u16,
    pub probes: u16,
    dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    /// Starts the server with `policy` (YAML) as its only policy and `env` added to its environment.
    pub fn start(policy: &str, env: &[(&str, &str)]) -> Webhook {
        Webhook::start_with(policy, &[], env)
    }

    /// As [`Webhook::start`], with extra `serve` arguments.
    pub fn start_with(policy: &str, args: &[&str], env: &[(&str, &str)]) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        super::serve_files(dir.path(), policy);
        let (probes, https) = (super::free_port(), super::free_port());
        let mut command = super::serve_command(dir.path(), probes, https);
        command
            .args(args)
            .env("RXG_LOG", "warn")
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let ready = format!("http://127.0.0.1:{probes}/readyz");
        let start = Instant::now();
        while super::process::http_status(&ready) != Some(200) {
            let exited = child.try_wait().unwrap();
            let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            assert!(exited.is_none(), "server exited ({exited:?}): {}", log());
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server never ready: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Webhook {
            child,
            https,
            probes,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `https://127.0.0.1:<port>/validate` with the API server's `timeout` query parameter.
    pub fn validate_url(&self, timeout_seconds: u32) -> String {
        format!(
            "https://127.0.0.1:{}/validate?timeout={timeout_seconds}s",
            self.https
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A `/proc/<pid>/status` figure in MiB: `VmRSS` (resident now) or `VmHWM` (the peak so far).
    pub fn memory_mib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib / 1024
    }
}

/// A client of the webhook's TLS port (its certificate is self-signed).
pub fn client() -> reqwest::Client {
    registryx_guard::tls::install_crypto_provider();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An AdmissionReview (JSON) of a Pod CREATE whose containers name `images`.
pub fn pod_review(images: &[String]) -> String {
    let fixture =
        std::fs::read_to_string(super::repo_root().join("tests/data/pod-create.json")).unwrap();
    let mut review: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    let containers: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    review["request"]["object"]["spec"] = serde_json::json!({ "containers": containers });
    review.to_string()
}
