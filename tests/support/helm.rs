//! The chart as an operator runs it: `helm install`, `upgrade` and `template` of charts/registryx-guard
//! (or a copy of it) as release `rxg` in namespace `registryx-guard`, the one way every cluster test
//! installs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::cluster::ControlPlane;
use super::cosign::assert_success;
use super::{repo_root, tool};

/// The chart's namespace in every cluster test.
pub const NAMESPACE: &str = "registryx-guard";
/// The release name: the chart's objects are named after it (`rxg`, `rxg-tls`).
pub const RELEASE: &str = "rxg";

/// charts/registryx-guard.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/registryx-guard")
}

/// One helm command against a cluster, built up from the chart's defaults.
pub struct Helm<'c> {
    cluster: &'c ControlPlane,
    chart: PathBuf,
    values: Vec<String>,
    wait: bool,
}

impl<'c> Helm<'c> {
    /// charts/registryx-guard in `cluster`, with the chart's defaults.
    pub fn new(cluster: &'c ControlPlane) -> Helm<'c> {
        Helm {
            cluster,
            chart: chart_dir(),
            values: Vec::new(),
            wait: false,
        }
    }

    /// Another chart folder (an older copy of the chart).
    pub fn chart(mut self, chart: PathBuf) -> Helm<'c> {
        self.chart = chart;
        self
    }

    /// `--set VALUE`: typed as helm reads it (`replicaCount=0` is a number).
    pub fn set(mut self, value: &str) -> Helm<'c> {
        self.values.extend(["--set".to_owned(), value.to_owned()]);
        self
    }

    /// `--set-string VALUE`: always a string (an annotation, a rotation counter).
    pub fn set_string(mut self, value: &str) -> Helm<'c> {
        self.values
            .extend(["--set-string".to_owned(), value.to_owned()]);
        self
    }

    /// `--wait --timeout 180s`: returns once the rollout is Ready.
    pub fn wait(mut self) -> Helm<'c> {
        self.wait = true;
        self
    }

    /// `helm install`, creating the namespace if it is missing.
    pub fn install(&self) -> Output {
        self.run("install", &["--create-namespace"])
    }

    /// `helm upgrade --reuse-values`: the values given here change, the others stay.
    pub fn upgrade(&self) -> Output {
        self.run("upgrade", &["--reuse-values"])
    }

    fn run(&self, command: &str, flags: &[&str]) -> Output {
        let mut helm = Command::new(tool("helm"));
        helm.args([command, RELEASE])
            .arg(&self.chart)
            .args(["--namespace", NAMESPACE, "--kubeconfig"])
            .arg(&self.cluster.kubeconfig)
            .args(flags)
            .args(&self.values);
        if self.wait {
            helm.args(["--wait", "--timeout", "180s"]);
        }
        helm.output().expect("run helm")
    }
}

/// `helm install` of the chart with `--set` `values`; panics with helm's output when it fails.
pub fn helm_install(cluster: &ControlPlane, values: &[&str]) -> Output {
    let helm = values
        .iter()
        .fold(Helm::new(cluster), |helm, value| helm.set(value));
    let output = helm.install();
    assert_success("helm install", &output);
    output
}

/// `helm upgrade --reuse-values` of the chart with `--set-string` `values`: helm's output, checked by
/// the caller.
pub fn helm_upgrade(cluster: &ControlPlane, values: &[&str]) -> Output {
    values
        .iter()
        .fold(Helm::new(cluster), |helm, value| helm.set_string(value))
        .upgrade()
}

/// `helm template` of the chart in its namespace, CRDs included, with `--set` `values`: the manifests,
/// or helm's output when it fails.
/// Every document of a rendered manifest stream, as JSON.
pub fn documents(manifests: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|doc| serde_json::Value::deserialize(doc).ok())
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn helm_template(values: &[&str]) -> Output {
    let mut command = Command::new(tool("helm"));
    command.args(["template", RELEASE]).arg(chart_dir()).args([
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ]);
    for value in values {
        command.args(["--set", value]);
    }
    command.output().expect("run helm template")
}
