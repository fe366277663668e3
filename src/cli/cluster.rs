//! `verify --cluster`: the policies, the Secrets and ConfigMaps they name, and the namespace's labels as
//! the cluster of the current kube context holds them, read once and read-only, so that "why would this
//! pod be refused?" is answered before `kubectl apply`, in the webhook's own words.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, api::ListParams};

use crate::controller::ClusterSources;
use crate::policy::ImageSigningPolicy;

/// The label that opts a namespace in under the chart's default `webhook.namespaces: optIn`.
const OPT_IN_LABEL: &str = "registryx.io/include";

/// What the webhook would know, read from the cluster.
pub struct ClusterView {
    /// Where registryx-guard runs: the default namespace of the Secrets policies name.
    pub guard_namespace: String,
    pub policies: Vec<ImageSigningPolicy>,
    pub sources: ClusterSources,
    /// The labels of the namespace asked about, when one was named.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// Lines for the user: what the webhook would see differently (a namespace not opted in).
    pub notes: Vec<String>,
}

/// Reads the cluster of the current context (KUBECONFIG, or in-cluster): every ImageSigningPolicy,
/// the Secrets and ConfigMaps of `guard_namespace` (where registryx-guard reads them), and the labels
/// of `namespace`. A Secret list that RBAC forbids leaves the policies that need one not usable, as
/// they would be for the webhook without them, with a note.
pub async fn read(guard_namespace: &str, namespace: Option<&str>) -> anyhow::Result<ClusterView> {
    crate::tls::install_crypto_provider();
    let client = Client::try_default()
        .await
        .context("--cluster: no usable kube context (KUBECONFIG or ~/.kube/config)")?;
    let policies = Api::<ImageSigningPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("--cluster: cannot list ImageSigningPolicies (is the CRD installed?)")?
        .items;
    let mut notes = Vec::new();
    let secrets = match Api::<Secret>::namespaced(client.clone(), guard_namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            notes.push(format!(
                "cannot list the Secrets of {guard_namespace} ({error}): policies that name one are \
                 shown as not usable"
            ));
            Vec::new()
        }
    };
    let config_maps = match Api::<ConfigMap>::namespaced(client.clone(), guard_namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            notes.push(format!(
                "cannot list the ConfigMaps of {guard_namespace} ({error}): policies that name one \
                 are shown as not usable"
            ));
            Vec::new()
        }
    };
    let namespace_labels = match namespace {
        Some(name) => {
            let found = Api::<Namespace>::all(client)
                .get_opt(name)
                .await
                .with_context(|| format!("--cluster: cannot read namespace {name}"))?;
            let labels = match found {
                Some(found) => found.metadata.labels.unwrap_or_default(),
                None => {
                    notes.push(format!(
                        "namespace {name} does not exist: the webhook refuses what it cannot look \
                         up; decided here with no labels"
                    ));
                    BTreeMap::new()
                }
            };
            if labels.get(OPT_IN_LABEL).map(String::as_str) != Some("true") {
                notes.push(format!(
                    "namespace {name} is not labelled {OPT_IN_LABEL}=true: with the chart's default \
                     (webhook.namespaces: optIn) the webhook does not review its pods"
                ));
            }
            Some(labels)
        }
        None => None,
    };
    Ok(ClusterView {
        guard_namespace: guard_namespace.to_owned(),
        policies,
        sources: ClusterSources::new(guard_namespace, store(secrets), store(config_maps)),
        namespace_labels,
        notes,
    })
}

/// A reflector store holding `objects`, as the controller's watches would after their first sync.
fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}
