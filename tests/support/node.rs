//! A node that runs pods, joined to a [`ControlPlane::start_for_pods`]: containerd, runc and the CNI
//! bridge from Debian's packages, kubelet, kube-scheduler and kube-controller-manager built from the
//! pinned Kubernetes modules (`make tools`), all started by `e2e/node.sh` and stopped (mounts, bridge,
//! cgroups and all) when the value is dropped. Images are imported, never pulled from outside.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use super::cluster::ControlPlane;
use super::repo_root;

pub struct Node {
    work: TempDir,
}

fn node_sh(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("e2e/node.sh"))
        .args(args)
        .output()
        .expect("run e2e/node.sh")
}

impl Node {
    /// Starts the node and returns once it is Ready.
    pub fn start(cluster: &ControlPlane) -> Node {
        let work = tempfile::Builder::new()
            .prefix("rxg-node-")
            .tempdir()
            .unwrap();
        let node = Node { work };
        let output = node_sh(&[
            "start".as_ref(),
            node.work.path().as_os_str(),
            cluster.kubeconfig.as_os_str(),
            cluster.server.as_ref(),
        ]);
        assert!(
            output.status.success(),
            "e2e/node.sh start failed:\n{}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            node.logs()
        );
        node
    }

    /// Imports an image archive (an OCI layout or `docker save` tarball) into the node's containerd.
    pub fn load_image(&self, tar: &Path) {
        let output = node_sh(&[
            "load".as_ref(),
            self.work.path().as_os_str(),
            tar.as_os_str(),
        ]);
        assert!(
            output.status.success(),
            "loading {} failed: {}",
            tar.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The node's address: pods and this machine both reach a service listening there.
    pub fn ip(&self) -> String {
        let env = std::fs::read_to_string(self.work.path().join("node.env")).unwrap_or_default();
        env.lines()
            .find_map(|l| l.strip_prefix("NODE_IP="))
            .expect("NODE_IP in node.env")
            .to_owned()
    }

    /// Lets the node's containerd pull from `host` (`ip:port`) over plain HTTP.
    pub fn allow_plain_http(&self, host: &str) {
        let dir = self.work.path().join("containerd/certs.d").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
    }

    /// The tails of the node's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "kubelet",
            "containerd",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let log =
                std::fs::read_to_string(self.work.path().join("logs").join(format!("{name}.log")))
                    .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("--- {name} ---\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let output = node_sh(&["stop".as_ref(), self.work.path().as_os_str()]);
        if !output.status.success() {
            eprintln!(
                "e2e/node.sh stop: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
