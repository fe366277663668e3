//! Real OCI registries on loopback: the CNCF distribution registry (Debian's docker-registry) and
//! go-containerregistry's registry, which implements the OCI 1.1 referrers API. Images are built here
//! (an empty layer and a config that carries a seed, so every seed gives another digest) and pushed over
//! the distribution API like any client would.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::process::{Process, http_ok};
use super::{free_port, tool};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct Registry {
    /// `127.0.0.1:<port>`, as it appears in image references.
    pub host: String,
    scheme: &'static str,
    client: reqwest::Client,
    ca_pem: Option<String>,
    process: Process,
    _dir: TempDir,
}

/// An image pushed by the harness.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `host/repository:tag`
    pub reference: String,
    pub repository: String,
    pub tag: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
}

impl PushedImage {
    /// `host/repository@sha256:<hex>`
    pub fn by_digest(&self) -> String {
        let host = self.reference.split('/').next().unwrap();
        format!("{host}/{}@{}", self.repository, self.digest)
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl Registry {
    /// The distribution registry (no referrers API: signatures are found through tags).
    pub fn distribution() -> Registry {
        Registry::distribution_at("127.0.0.1")
    }

    /// The distribution registry listening on `ip` (a node's address, which pods reach as well as
    /// this machine), named `ip:<port>` in references.
    pub fn distribution_at(ip: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {ip}:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut command = Command::new(tool("registry"));
        command.arg("serve").arg(&config);
        Self::started_at("registry", command, ip, port, dir)
    }

    /// go-containerregistry's registry with the OCI 1.1 referrers API.
    pub fn with_referrers() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new(tool("ociregistry"));
        command.arg("-addr").arg(format!("127.0.0.1:{port}"));
        Self::started("ociregistry", command, port, dir)
    }

    fn started(name: &str, command: Command, port: u16, dir: TempDir) -> Registry {
        Self::started_at(name, command, "127.0.0.1", port, dir)
    }

    fn started_at(name: &str, command: Command, ip: &str, port: u16, dir: TempDir) -> Registry {
        let mut process = Process::start(name, command, dir.path());
        let url = format!("http://{ip}:{port}/v2/");
        process.wait_until("answering /v2/", Duration::from_secs(20), || http_ok(&url));
        Registry {
            host: format!("{ip}:{port}"),
            scheme: "http",
            client: reqwest::Client::new(),
            ca_pem: None,
            process,
            _dir: dir,
        }
    }

    /// The distribution registry over HTTPS, with a certificate from a CA made here (not in the system
    /// roots): what a policy's `registry.caBundle` is for.
    pub fn distribution_with_tls() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "registry test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  tls: {{certificate: {}, key: {}}}\n",
                dir.path().join("data").display(),
                cert_path.display(),
                key_path.display()
            ),
        )
        .unwrap();
        let mut command = Command::new(tool("registry"));
        command.arg("serve").arg(&config);
        let mut process = Process::start("registry-tls", command, dir.path());
        let address = format!("127.0.0.1:{port}");
        process.wait_until("listening", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&address).is_ok()
        });
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        Registry {
            host: address,
            scheme: "https",
            client,
            ca_pem: Some(ca.pem()),
            process,
            _dir: dir,
        }
    }

    /// The CA that signed an HTTPS registry's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// Uploads a blob (monolithic upload) and returns its digest.
    pub async fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let client = self.client.clone();
        let digest = sha256(bytes);
        let start = client
            .post(self.url(&format!("/v2/{repository}/blobs/uploads/")))
            .send()
            .await
            .expect("start blob upload");
        assert_eq!(
            start.status(),
            202,
            "blob upload start: {}",
            start.text().await.unwrap_or_default()
        );
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            self.url(&location)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = client
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("finish blob upload");
        assert_eq!(
            put.status(),
            201,
            "blob upload: {}",
            put.text().await.unwrap_or_default()
        );
        digest
    }

    /// Puts a manifest under `reference` (a tag or a digest) and returns its digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let response = self
            .client
            .put(self.url(&format!("/v2/{repository}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("push manifest");
        assert_eq!(
            response.status(),
            201,
            "manifest push: {}",
            response.text().await.unwrap_or_default()
        );
        sha256(bytes)
    }

    /// Builds and pushes a single-platform image whose digest depends on `seed`.
    pub async fn push_image(&self, repository: &str, tag: &str, seed: &str) -> PushedImage {
        // An empty tar archive is two zero blocks: a valid layer that no runtime will ever unpack here.
        let layer = vec![0u8; 1024];
        let layer_digest = self.push_blob(repository, &layer).await;
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"registryx-guard.test/seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .unwrap();
        let config_digest = self.push_blob(repository, &config).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        let digest = self
            .push_manifest(repository, tag, OCI_MANIFEST, &manifest)
            .await;
        PushedImage {
            reference: format!("{}/{repository}:{tag}", self.host),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest,
        }
    }

    /// Pushes an image index of `platforms` (images pushed before) under `tag`.
    pub async fn push_index(
        &self,
        repository: &str,
        tag: &str,
        platforms: &[(&str, &PushedImage)],
    ) -> PushedImage {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .map(|(arch, image)| json!({"mediaType": OCI_MANIFEST, "digest": image.digest, "size": 1, "platform": {"os": "linux", "architecture": arch}}))
            .collect();
        // Sizes must be right: registries check the descriptors of an index they store.
        let mut manifests = manifests;
        for (entry, (_, image)) in manifests.iter_mut().zip(platforms) {
            let (_, _, _, body) = self.get_manifest(&image.repository, &image.digest).await;
            entry["size"] = json!(body.len());
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap();
        let digest = self.push_manifest(repository, tag, OCI_INDEX, &index).await;
        PushedImage {
            reference: format!("{}/{repository}:{tag}", self.host),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest,
        }
    }

    /// GETs a manifest by tag or digest: (status, digest header, content type, body).
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> (u16, Option<String>, Option<String>, Vec<u8>) {
        let response = self
            .client
            .get(self.url(&format!("/v2/{repository}/manifests/{reference}")))
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .expect("get manifest");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (digest, content_type) = (header("docker-content-digest"), header("content-type"));
        (
            response.status().as_u16(),
            digest,
            content_type,
            response.bytes().await.unwrap().to_vec(),
        )
    }

    /// Deletes the manifest `reference` (a tag or a digest) names, as `crane delete` does: by digest,
    /// which removes every tag naming it.
    pub async fn delete_manifest(&self, repository: &str, reference: &str) {
        let (status, digest, _, _) = self.get_manifest(repository, reference).await;
        assert_eq!(
            status, 200,
            "no manifest {repository}:{reference} to delete"
        );
        let digest = digest.expect("the registry names the manifest's digest");
        let response = self
            .client
            .delete(self.url(&format!("/v2/{repository}/manifests/{digest}")))
            .send()
            .await
            .expect("delete manifest");
        assert_eq!(
            response.status().as_u16(),
            202,
            "delete {repository}@{digest}"
        );
    }

    /// The tags of a repository.
    pub async fn tags(&self, repository: &str) -> Vec<String> {
        let body: serde_json::Value = self
            .client
            .get(self.url(&format!("/v2/{repository}/tags/list")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
