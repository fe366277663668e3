//! Test harness: starts the real tools of the test toolchain (`make tools`) as processes on free loopback
//! ports and stops them when the test ends; a missing tool is a failed test with the command that installs
//! it, never a skipped one. The only fakes (`fakes`) are registries that misbehave on purpose (hang,
//! fail, lie, oversize) and RegistryX's own auth quirks in front of a real registry.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod cosign;
pub mod fakes;
pub mod keyless;
pub mod node;
pub mod process;
pub mod registry;
pub mod verdicts;

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

/// A loopback port that was free a moment ago. The tools we start take their port on the command line,
/// so the tiny race between this probe and their bind is accepted; a clash shows as a start failure.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
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
