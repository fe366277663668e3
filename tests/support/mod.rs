//! Test harness: starts the real tools of the test toolchain (`make tools`) as processes on free loopback
//! ports and stops them when the test ends; a missing tool is a failed test with the command that installs
//! it, never a skipped one. The only fakes (`fakes`) are registries that misbehave on purpose (hang,
//! fail, lie, oversize) and RegistryX's own auth quirks in front of a real registry.
#![allow(dead_code)] // each of the two test binaries uses a different part of the harness

pub mod cluster;
pub mod cosign;
pub mod fakes;
pub mod helm;
pub mod keyless;
pub mod node;
pub mod policy;
pub mod process;
pub mod registry;
pub mod rekor;
pub mod serial;
pub mod verdicts;
pub mod webhook;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a tool installed by `e2e/tools/install.sh` (`RXG_TOOLS_DIR`, default `.tools`).
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("RXG_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"));
    let path = dir.join("bin").join(name);
    assert!(
        path.exists(),
        "test tool {} is missing: run `make tools` (e2e/tools/install.sh) first",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago, chosen below the kernel's ephemeral range. The tools we
/// start take their port on the command line, so a tiny race between this probe and their bind remains.
/// Why not bind port 0: the kernel gives out the ephemeral range, which is also where the source ports
/// of outgoing connections come from; a test opening hundreds of connections in parallel (tests/it/floods.rs)
/// took a probed port as a source port before the server bound it. Same rule as e2e/free_port.py.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if low < FIRST + 1_000 {
        // An ephemeral range that starts this low leaves no room below it: the kernel's choice then.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("no free loopback port");
    }
    let span = low - FIRST;
    let stride = if span.is_multiple_of(4_099) { 1 } else { 4_099 };
    // A start that differs between test processes, and a stride that keeps the threads of one process
    // apart (4,099 is prime: unless it divides the span, it visits every port of it).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let start = std::process::id().wrapping_mul(7_919) ^ nanos;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + start.wrapping_add(step.wrapping_mul(stride)) % span;
        let port = u16::try_from(port).expect("ports below the ephemeral range fit in u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}")
}

/// `registryx-guard serve` on 127.0.0.1 (`probes` and `https` ports) with the certificate and policies
/// folder that [`serve_files`] wrote in `dir`.
///
/// `RXG_SERVE_BIN` names another build of the binary: worktrees that share one `CARGO_TARGET_DIR` all
/// write `target/debug/registryx-guard`, so a test run can point at its own build
/// (`target/debug/deps/registryx_guard-<hash>`, unique per worktree) instead of whichever was linked last.
pub fn serve_command(dir: &std::path::Path, probes: u16, https: u16) -> std::process::Command {
    let binary = std::env::var_os("RXG_SERVE_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_registryx-guard").into());
    let mut command = std::process::Command::new(binary);
    command
        .args(["serve", "--probes-listen", &format!("127.0.0.1:{probes}")])
        .args(["--listen", &format!("127.0.0.1:{https}")])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--policy-dir")
        .arg(dir.join("policies"));
    command
}

/// Writes a self-signed certificate for 127.0.0.1 as `tls.crt` and `tls.key` in `dir`, and a `policies`
/// folder holding `policy` as `p.yaml`; returns the policies folder, for `serve --policy-dir`.
pub fn serve_files(dir: &std::path::Path, policy: &str) -> PathBuf {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("p.yaml"), policy).unwrap();
    policies
}

/// The review of `data/pod-create.json` with its containers replaced by `(name, image)` and no init
/// containers, for a server started with [`serve_command`].
pub fn pod_create_review(containers: &[(&str, &str)]) -> serde_json::Value {
    let mut review: serde_json::Value =
        serde_json::from_str(include_str!("../data/pod-create.json")).unwrap();
    review["request"]["object"]["spec"]["containers"] = containers
        .iter()
        .map(|(name, image)| serde_json::json!({"name": name, "image": image}))
        .collect();
    review["request"]["object"]["spec"]["initContainers"] = serde_json::json!([]);
    review
}

/// Posts `review` to the validating endpoint of a server on `https` (its self-signed certificate
/// accepted) and returns the answer.
pub fn post_validate(https: u16, review: &serde_json::Value) -> reqwest::Result<serde_json::Value> {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?
        .post(format!("https://127.0.0.1:{https}/validate"))
        .json(review)
        .send()
        .and_then(|r| r.json::<serde_json::Value>())
}

/// The server's /metrics on `port` once it contains `needle` (or after 10 s, as it was then).
pub fn metrics_once(port: u16, needle: &str) -> String {
    let client = reqwest::blocking::Client::new();
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        if metrics.contains(needle) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    metrics
}
