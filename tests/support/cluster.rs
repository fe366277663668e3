//! A real control plane: etcd and kube-apiserver (built from Go modules by `make tools`) on free loopback
//! ports, with a kubeconfig whose user is in `system:masters`. There is no kubelet, scheduler or
//! controller-manager: objects are stored and admitted, never run, which is all an admission webhook and
//! a policy controller need.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{Process, http_ok};
use super::serial::{NodeTurn, Room, node_turn, room};
use super::{free_port, tool};

pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub kubeconfig: PathBuf,
    // Field order is drop order: the API server stops before etcd.
    apiserver: Process,
    etcd: Process,
    dir: TempDir,
    /// One control plane with a node at a time ([`super::serial::node_turn`]); left before the room.
    _node: Option<NodeTurn>,
    /// Control planes run side by side; one for a node runs alone (its node's kubelet, containerd and
    /// replicas are the heaviest thing the tests start, and its checks are timed). Left last.
    _room: Room,
}

const TOKEN: &str = "registryx-guard-test-admin-token";

impl ControlPlane {
    /// A control plane for objects that are stored and admitted, never run.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(false)
    }

    /// A control plane for a node that runs pods ([`super::node::Node`]): the ServiceAccount admission
    /// plugin on (its controller runs), and Services reached by their endpoints (no kube-proxy needed
    /// for webhooks).
    pub fn start_for_pods() -> ControlPlane {
        ControlPlane::start_with(true)
    }

    fn start_with(pods: bool) -> ControlPlane {
        let room = room(if pods { "node" } else { "control-plane" });
        // The room admits several node tests together; the node itself is one at a time.
        let node = pods.then(node_turn);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();

        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(tool("etcd"));
        command
            .arg("--data-dir")
            .arg(path.join("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--log-level", "warn", "--unsafe-no-fsync"]);
        let mut etcd = Process::start("etcd", command, path);
        let health = format!("{client_url}/health");
        etcd.wait_until("healthy", Duration::from_secs(30), || http_ok(&health));

        // The service-account token signer: kube-apiserver refuses to start without one.
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(path.join("sa.pub"), key.public_key_pem()).unwrap();
        std::fs::write(
            path.join("tokens.csv"),
            format!("{TOKEN},admin,admin-uid,system:masters\n"),
        )
        .unwrap();

        let port = free_port();
        let mut command = Command::new(tool("kube-apiserver"));
        command
            .args(["--etcd-servers", &client_url])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--secure-port", &port.to_string()])
            .arg("--cert-dir")
            .arg(path.join("certs"))
            .arg(format!(
                "--token-auth-file={}",
                path.join("tokens.csv").display()
            ))
            .arg(format!(
                "--service-account-key-file={}",
                path.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path.join("sa.key").display()
            ))
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            .args(["--authorization-mode", "Node,RBAC"])
            .args(["-v", "1"]);
        if pods {
            command.arg("--enable-aggregator-routing=true");
        } else {
            // No controller-manager creates the default ServiceAccount that this plugin insists on.
            command.args(["--disable-admission-plugins", "ServiceAccount"]);
        }
        let mut apiserver = Process::start("kube-apiserver", command, path);

        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = path.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
                 users:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n"
            ),
        )
        .unwrap();

        let probe_config = kubeconfig.clone();
        apiserver.wait_until("ready", Duration::from_secs(120), || {
            kubectl_with(&probe_config, &["get", "--raw", "/readyz"])
                .is_ok_and(|output| output.status.success() && output.stdout == b"ok")
        });
        ControlPlane {
            server,
            kubeconfig,
            apiserver,
            etcd,
            dir,
            _node: node,
            _room: room,
        }
    }

    /// A client of this control plane's API server, as its administrator.
    pub async fn client(&self) -> kube::Client {
        self.client_impersonating(None).await
    }

    /// A client acting as `user` (a ServiceAccount is `system:serviceaccount:<namespace>:<name>`):
    /// allowed what RBAC grants that user, no more.
    pub async fn client_as(&self, user: &str) -> kube::Client {
        self.client_impersonating(Some(user)).await
    }

    async fn client_impersonating(&self, user: Option<&str>) -> kube::Client {
        registryx_guard::tls::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        config.auth_info.impersonate = user.map(str::to_owned);
        kube::Client::try_from(config).unwrap()
    }

    /// Installs the ImageSigningPolicy CRD from crds/ and waits until it is served.
    pub fn install_crd(&self) {
        let crd = super::repo_root().join("crds/imagesigningpolicies.registryx.io.yaml");
        super::cosign::assert_success(
            "apply CRD",
            &self.kubectl(&["apply", "-f", crd.to_str().unwrap()]),
        );
        super::cosign::assert_success(
            "CRD established",
            &self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/imagesigningpolicies.registryx.io",
                "--timeout=30s",
            ]),
        );
    }

    /// Runs kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig, args).expect("run kubectl")
    }

    /// Runs kubectl with `stdin` on its standard input (`apply -f -` of a manifest written by a test).
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut child = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(stdin.as_bytes())
            .expect("write to kubectl");
        child.wait_with_output().expect("wait for kubectl")
    }

    pub fn apiserver_log(&self) -> String {
        self.apiserver.log_tail()
    }

    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn kubectl_with(kubeconfig: &std::path::Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "10s"])
        .args(args)
        .output()
}
