//! Real cosign v3: a key pair made by `cosign generate-key-pair`, and signatures in both of cosign's
//! formats. No network: nothing goes to a transparency log or a TUF mirror (`--tlog-upload=false`,
//! `--use-signing-config=false`), so signatures made here carry no Rekor entry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use super::tool;

pub const PASSWORD: &str = "registryx-guard-test";

/// Where cosign stores the signature it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The legacy simple-signing manifest under the `sha256-<hex>.sig` tag (cosign v2, and v3 with
    /// `--new-bundle-format=false`).
    Legacy,
    /// A sigstore bundle v0.3 attached as an OCI referrer (cosign v3's default).
    Bundle,
}

pub struct Cosign {
    dir: TempDir,
}

impl Cosign {
    /// A fresh key pair (`cosign.key`, `cosign.pub`) protected by [`PASSWORD`].
    pub fn with_new_key_pair() -> Cosign {
        let dir = tempfile::tempdir().unwrap();
        let output = command_in(dir.path())
            .arg("generate-key-pair")
            .output()
            .unwrap();
        assert_success("cosign generate-key-pair", &output);
        Cosign { dir }
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.path().join("cosign.key")
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("cosign.pub")
    }

    pub fn public_key_pem(&self) -> String {
        std::fs::read_to_string(self.public_key()).unwrap()
    }

    pub fn command(&self) -> Command {
        command_in(self.dir.path())
    }

    /// Signs `image` (a reference by tag or digest) with the private key; panics with cosign's output on
    /// failure.
    pub fn sign(&self, image: &str, format: Format) {
        let mut command = sign_command(self.dir.path(), &self.private_key(), format);
        // cosign knows loopback registries speak plain HTTP; a node's address must be said.
        if !image.starts_with("127.0.0.1:") && !image.starts_with("localhost:") {
            command.arg("--allow-http-registry");
        }
        let output = command.arg(image).output().unwrap();
        assert_success(&format!("cosign sign {image}"), &output);
    }

    /// Attests `image` with the private key: `cosign attest --type <kind> --predicate <predicate>`,
    /// offline; panics with cosign's output on failure.
    pub fn attest(&self, image: &str, kind: &str, predicate: &serde_json::Value, format: Format) {
        let mut command = attest_command(
            self.dir.path(),
            &self.private_key(),
            kind,
            predicate,
            format,
        );
        if !image.starts_with("127.0.0.1:") && !image.starts_with("localhost:") {
            command.arg("--allow-http-registry");
        }
        let output = command.arg(image).output().unwrap();
        assert_success(&format!("cosign attest --type {kind} {image}"), &output);
    }

    /// Runs `cosign verify` with the public key, without a transparency log; returns its output.
    pub fn verify(&self, image: &str, format: Format) -> Output {
        self.command()
            .args(["verify", "--key"])
            .arg(self.public_key())
            .args(["--insecure-ignore-tlog=true", "--offline=true"])
            .arg(format!("--new-bundle-format={}", format == Format::Bundle))
            .arg(image)
            .output()
            .unwrap()
    }
}

/// cosign run in `dir`, with [`PASSWORD`] for its keys, and its TUF cache and Docker credentials in
/// `dir` instead of the user's home.
pub fn command_in(dir: &Path) -> Command {
    let mut command = Command::new(tool("cosign"));
    command
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HOME", dir)
        .env("TUF_ROOT", dir.join("tuf"))
        .env("DOCKER_CONFIG", dir.join("docker"));
    command
}

/// `cosign sign` in `dir` with the private `key`, offline: no transparency-log upload, no signing
/// config fetched from a TUF mirror. The caller adds what else it signs with and the image.
pub fn sign_command(dir: &Path, key: &Path, format: Format) -> Command {
    let mut command = command_in(dir);
    command
        .args(["sign", "--yes", "--key"])
        .arg(key)
        .args(["--tlog-upload=false", "--use-signing-config=false"])
        .arg(format!("--new-bundle-format={}", format == Format::Bundle));
    command
}

/// `cosign attest` of `predicate` (written into `dir`) as `kind` with `key`, offline, in `format`;
/// the image (and any certificate flags) still to be added.
pub fn attest_command(
    dir: &Path,
    key: &Path,
    kind: &str,
    predicate: &serde_json::Value,
    format: Format,
) -> Command {
    let file = dir.join(format!("predicate-{}.json", kind.replace(['/', ':'], "_")));
    std::fs::write(&file, serde_json::to_vec(predicate).unwrap()).unwrap();
    let mut command = command_in(dir);
    command
        .args(["attest", "--yes", "--key"])
        .arg(key)
        .args(["--type", kind, "--predicate"])
        .arg(&file)
        .args(["--tlog-upload=false", "--use-signing-config=false"])
        .arg(format!("--new-bundle-format={}", format == Format::Bundle));
    command
}

pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
