//! What runs: Pods that have not finished, and the pod templates of workloads that have no pod yet,
//! from kube reflectors whose objects are cut down to what an audit reads (name, namespace, uid, owners,
//! images) before they are stored, so that 5,000 pods cost kilobytes each, not their whole manifests.
//!
//! A workload's template is audited only while none of its pods exists (owner references tell:
//! Deployment -> ReplicaSet -> Pod, CronJob -> Job -> Pod), and only for the workload at the top of
//! that chain: an old ReplicaSet scaled to zero, or a finished Job of a CronJob, is history, not what
//! will run.

use std::collections::HashSet;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Container, EphemeralContainer, Pod, PodSpec, PodStatus, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};

use crate::admission::Workload;

/// One object whose images are audited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `Pod`, or the workload's kind for a template.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `(container, image)`, the container as admission names it (`containers[web]`).
    pub images: Vec<(String, String)>,
}

impl Subject {
    /// `namespace/pod`, or `Kind namespace/name` for a template.
    pub fn display(&self) -> String {
        match self.kind {
            "Pod" => format!("{}/{}", self.namespace, self.name),
            kind => format!("{kind} {}/{}", self.namespace, self.name),
        }
    }
}

/// The reflectors of Pods and of the six workload kinds.
#[derive(Clone)]
pub struct Inventory {
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
    jobs: Store<Job>,
    cron_jobs: Store<CronJob>,
}

impl Inventory {
    /// Starts the watches (cluster-wide: the namespace filter is the audit's, and namespaces opt in
    /// at any time).
    pub fn start(client: &Client) -> Inventory {
        // Finished pods run nothing; the API server filters them out of the watch.
        let running = watcher::Config::default()
            .fields("status.phase!=Succeeded,status.phase!=Failed")
            .any_semantic();
        Inventory {
            pods: watch(Api::all(client.clone()), running, |pod: &mut Pod| {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                pod.status = Some(PodStatus {
                    phase,
                    ..PodStatus::default()
                });
                if let Some(spec) = pod.spec.as_mut() {
                    cut_spec(spec);
                }
            }),
            deployments: watch_templates(client, |d: &mut Deployment| {
                d.spec.as_mut().map(|s| &mut s.template)
            }),
            replica_sets: watch_templates(client, |r: &mut ReplicaSet| {
                r.spec.as_mut().and_then(|s| s.template.as_mut())
            }),
            stateful_sets: watch_templates(client, |s: &mut StatefulSet| {
                s.spec.as_mut().map(|s| &mut s.template)
            }),
            daemon_sets: watch_templates(client, |d: &mut DaemonSet| {
                d.spec.as_mut().map(|s| &mut s.template)
            }),
            jobs: watch_templates(client, |j: &mut Job| {
                j.spec.as_mut().map(|s| &mut s.template)
            }),
            cron_jobs: watch_templates(client, |c: &mut CronJob| {
                c.spec
                    .as_mut()
                    .and_then(|s| s.job_template.spec.as_mut())
                    .map(|s| &mut s.template)
            }),
        }
    }

    /// Waits for every watch's first list; an error when a watch cannot list (RBAC, a missing API).
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.replica_sets.wait_until_ready().await?;
        self.stateful_sets.wait_until_ready().await?;
        self.daemon_sets.wait_until_ready().await?;
        self.jobs.wait_until_ready().await?;
        self.cron_jobs.wait_until_ready().await
    }

    /// The subjects in namespaces that `audited` accepts: every pod, and the templates of top-level
    /// workloads none of whose pods exists.
    pub fn subjects(&self, audited: impl Fn(&str) -> bool) -> Vec<Subject> {
        let mut subjects = Vec::new();
        let pods = self.pods.state();
        let with_pods: HashSet<&str> = pods
            .iter()
            .flat_map(|p| p.metadata.owner_references.iter().flatten())
            .map(|o| o.uid.as_str())
            .collect();
        for pod in &pods {
            push_subject(&mut subjects, "Pod", &**pod, &audited);
        }
        // A ReplicaSet or Job with pods covers the Deployment or CronJob that owns it.
        let mut covered: HashSet<String> = HashSet::new();
        let replica_sets = self.replica_sets.state();
        let jobs = self.jobs.state();
        let children = replica_sets
            .iter()
            .map(|r| &r.metadata)
            .chain(jobs.iter().map(|j| &j.metadata));
        for child in children {
            if child.uid.as_deref().is_some_and(|u| with_pods.contains(u)) {
                covered.extend(
                    child
                        .owner_references
                        .iter()
                        .flatten()
                        .map(|o| o.uid.clone()),
                );
            }
        }
        let idle = |meta: &ObjectMeta| {
            let uid = meta.uid.as_deref().unwrap_or_default();
            let owned = meta
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true));
            !owned && !with_pods.contains(uid) && !covered.contains(uid)
        };
        macro_rules! templates {
            ($store:expr) => {
                for object in $store.iter().filter(|o| idle(o.meta())) {
                    push_subject(&mut subjects, kind_of(&**object), &**object, &audited);
                }
            };
        }
        templates!(self.deployments.state());
        templates!(replica_sets);
        templates!(self.stateful_sets.state());
        templates!(self.daemon_sets.state());
        templates!(jobs);
        templates!(self.cron_jobs.state());
        subjects
    }
}

fn kind_of<K: Resource<DynamicType = ()>>(_: &K) -> &'static str {
    // The six kinds' names, as 'static for the subject; anything else is no workload of ours.
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "ReplicaSet" => "ReplicaSet",
        "StatefulSet" => "StatefulSet",
        "DaemonSet" => "DaemonSet",
        "Job" => "Job",
        "CronJob" => "CronJob",
        _ => "Pod",
    }
}

/// The subject of `object`, if its namespace is audited and it names images. Images are read by
/// admission's own extraction, so that the audit sees exactly the fields the webhook checks.
fn push_subject<K>(
    subjects: &mut Vec<Subject>,
    kind: &'static str,
    object: &K,
    audited: &impl Fn(&str) -> bool,
) where
    K: Resource + serde::Serialize,
{
    let meta = object.meta();
    let Some(namespace) = meta.namespace.as_deref().filter(|ns| audited(ns)) else {
        return;
    };
    let Ok(value) = serde_json::to_value(object) else {
        return;
    };
    // A malformed image list was refused at admission already; the audit has nothing to add.
    let Ok(images) = Workload::new(kind, value).images() else {
        return;
    };
    if images.is_empty() {
        return;
    }
    subjects.push(Subject {
        kind,
        namespace: namespace.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        images: images.into_iter().map(|i| (i.container, i.image)).collect(),
    });
}

/// The metadata an audit reads; the rest (labels, annotations, managed fields) is dropped.
fn cut_meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        owner_references: meta.owner_references.take(),
        ..ObjectMeta::default()
    };
}

/// A pod spec cut down to its containers' names and images, and the image volumes.
fn cut_spec(spec: &mut PodSpec) {
    let containers = |list: &[Container]| -> Vec<Container> {
        list.iter()
            .map(|c| Container {
                name: c.name.clone(),
                image: c.image.clone(),
                ..Container::default()
            })
            .collect()
    };
    let ephemeral = spec.ephemeral_containers.as_ref().map(|list| {
        list.iter()
            .map(|c| EphemeralContainer {
                name: c.name.clone(),
                image: c.image.clone(),
                ..EphemeralContainer::default()
            })
            .collect()
    });
    let volumes: Option<Vec<Volume>> = spec.volumes.as_ref().map(|list| {
        list.iter()
            .filter(|v| v.image.is_some())
            .map(|v| Volume {
                name: v.name.clone(),
                image: v.image.clone(),
                ..Volume::default()
            })
            .collect()
    });
    *spec = PodSpec {
        containers: containers(&spec.containers),
        init_containers: spec.init_containers.as_deref().map(containers),
        ephemeral_containers: ephemeral,
        volumes: volumes.filter(|v| !v.is_empty()),
        ..PodSpec::default()
    };
}

/// What a reflector can hold.
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

fn watch_templates<K>(
    client: &Client,
    template: fn(&mut K) -> Option<&mut PodTemplateSpec>,
) -> Store<K>
where
    K: Watched,
{
    watch(
        Api::all(client.clone()),
        watcher::Config::default(),
        move |object: &mut K| {
            if let Some(template) = template(object) {
                template.metadata = None;
                if let Some(spec) = template.spec.as_mut() {
                    cut_spec(spec);
                }
            }
        },
    )
}

/// A reflector whose objects are cut by `cut` (and their metadata by [`cut_meta`]) before they are
/// stored.
fn watch<K>(api: Api<K>, config: watcher::Config, cut: impl Fn(&mut K) + Send + 'static) -> Store<K>
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |object| {
            cut_meta(object.meta_mut());
            cut(object);
        });
    let stream = reflector::reflector(writer, stream);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, kind = %K::kind(&()), "audit watch error; retrying");
            }
        }
    });
    store
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;

    use super::*;

    fn store<K: Watched>(objects: Vec<serde_json::Value>) -> Store<K> {
        let mut writer: Writer<K> = Writer::default();
        for object in objects {
            let object: K = serde_json::from_value(object).unwrap();
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        writer.as_reader()
    }

    fn meta(name: &str, owner: Option<(&str, &str)>) -> serde_json::Value {
        let owners: Vec<serde_json::Value> = owner
            .into_iter()
            .map(|(kind, uid)| {
                serde_json::json!({"apiVersion": "v1", "kind": kind, "name": uid, "uid": uid,
                    "controller": true})
            })
            .collect();
        serde_json::json!({"name": name, "namespace": "team", "uid": name, "ownerReferences": owners})
    }

    fn spec(image: &str) -> serde_json::Value {
        serde_json::json!({"containers": [{"name": "c", "image": image}]})
    }

    fn templated(name: &str, owner: Option<(&str, &str)>, image: &str) -> serde_json::Value {
        serde_json::json!({"metadata": meta(name, owner), "spec": {
            "selector": {}, "template": {"spec": spec(image)}}})
    }

    #[test]
    fn templates_are_audited_only_for_top_level_workloads_without_pods() {
        let inventory = Inventory {
            // A pod of ReplicaSet rs-live (of Deployment live), and one of Job job-live (of CronJob
            // nightly).
            pods: store(vec![
                serde_json::json!({"metadata": meta("live-1", Some(("ReplicaSet", "rs-live"))),
                    "spec": spec("r/live:1")}),
                serde_json::json!({"metadata": meta("job-1", Some(("Job", "job-live"))),
                    "spec": spec("r/job:1")}),
            ]),
            deployments: store(vec![
                templated("live", None, "r/live:1"),
                templated("idle", None, "r/idle:1"),
            ]),
            // The live Deployment's ReplicaSet, and an old one scaled to zero: history.
            replica_sets: store(vec![
                templated("rs-live", Some(("Deployment", "live")), "r/live:1"),
                templated("rs-old", Some(("Deployment", "live")), "r/old:1"),
            ]),
            stateful_sets: store(vec![templated("db", None, "r/db:1")]),
            daemon_sets: store(Vec::new()),
            jobs: store(vec![serde_json::json!({"metadata": meta("job-live",
                Some(("CronJob", "nightly"))), "spec": {"template": {"spec": spec("r/job:1")}}})]),
            cron_jobs: store(vec![serde_json::json!({"metadata": meta("nightly", None),
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                    "spec": spec("r/job:1")}}}}})]),
        };
        let subjects = inventory.subjects(|_| true);
        let mut named: Vec<String> = subjects.iter().map(Subject::display).collect();
        named.sort();
        assert_eq!(
            named,
            [
                "Deployment team/idle",
                "StatefulSet team/db",
                "team/job-1",
                "team/live-1"
            ]
        );
        let idle = subjects.iter().find(|s| s.name == "idle").unwrap();
        assert_eq!(
            idle.images,
            [("containers[c]".to_owned(), "r/idle:1".to_owned())]
        );
        assert!(inventory.subjects(|ns| ns != "team").is_empty());
    }

    #[test]
    fn a_pod_is_cut_to_what_an_audit_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "team", "uid": "u",
                "annotations": {"big": "x".repeat(10_000)}, "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "r/a:1",
                "env": [{"name": "E", "value": "v"}], "args": ["--x"]}],
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "model", "image": {"reference": "r/model:1"}}]},
        }))
        .unwrap();
        cut_meta(&mut pod.metadata);
        cut_spec(pod.spec.as_mut().unwrap());
        let json = serde_json::to_string(&pod).unwrap();
        assert!(json.len() < 300, "{json}");
        let images: Vec<String> = Workload::new("Pod", serde_json::to_value(&pod).unwrap())
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.image)
            .collect();
        assert_eq!(images, ["r/a:1", "r/model:1"]);
    }
}
