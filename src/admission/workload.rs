//! The workload under review: an object of one kind (a Pod, a workload controller with its pod
//! template, a CronJob with its job template) and all that admission reads of it or writes into it: its
//! images (containers, init and ephemeral containers, image volumes), its pod as Rego sees it, the
//! digests recorded at its admission, the images an UPDATE changes, and the patch of that record. The
//! kind travels with the object, so no caller passes it along.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::rego::RegoPod;

/// The annotation on a Pod (or a pod template) that records, for images whose policies do not pin
/// (`mutateDigest: false`), the digest each tag had when it was verified: `{"<image>": "sha256:..."}`.
/// A later admission whose tag resolves elsewhere is refused: the tag moved after it was verified.
pub const VERIFIED_DIGESTS_ANNOTATION: &str = "registryx.io/verified-digests";

/// An object of `kind`, as JSON.
#[derive(Clone, Debug)]
pub struct Workload {
    kind: String,
    object: Value,
}

/// One image field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    /// JSON pointer to the `image` field, for patches.
    pub pointer: String,
    /// `containers[web]`, for messages.
    pub container: String,
    pub image: String,
}

/// The JSON pointer of the pod spec inside an object of `kind`, or `None` for a kind that holds none.
pub fn pod_spec_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("/spec"),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template/spec"),
        "CronJob" => Some("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// The JSON pointer of the pod template of a workload `kind` (`None` for a Pod, which is no template:
/// its containers run as they are, and only an image field can change what a running pod runs).
/// Any change under it is a new rollout of pods; see [`Workload::changed_images`].
pub fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => None,
        _ => pod_spec_pointer(kind)?.strip_suffix("/spec"),
    }
}

impl Workload {
    pub fn new(kind: impl Into<String>, object: Value) -> Workload {
        Workload {
            kind: kind.into(),
            object,
        }
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn object(&self) -> &Value {
        &self.object
    }

    /// Every image, in container order (containers, init and ephemeral containers, image volumes).
    pub fn images(&self) -> Result<Vec<ContainerImage>, String> {
        images_of(&self.kind, &self.object)
    }

    /// The pod (or pod template) as Rego sees it: labels, annotations, service account.
    pub fn pod(&self) -> RegoPod {
        let metadata = self.metadata_pointer();
        let spec = pod_spec_pointer(&self.kind).unwrap_or("/spec");
        let map = |pointer: String| -> BTreeMap<String, String> {
            self.object
                .pointer(&pointer)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        RegoPod {
            labels: map(format!("{metadata}/labels")),
            annotations: map(format!("{metadata}/annotations")),
            service_account_name: self
                .object
                .pointer(&format!("{spec}/serviceAccountName"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        }
    }

    /// The digests recorded in the [`VERIFIED_DIGESTS_ANNOTATION`] of the pod (template). An annotation
    /// that does not parse records nothing: it can only ever cause a refusal, never an admission.
    pub fn recorded_digests(&self) -> BTreeMap<String, String> {
        let pointer = format!(
            "{}/annotations/{}",
            self.metadata_pointer(),
            VERIFIED_DIGESTS_ANNOTATION.replace('/', "~1")
        );
        self.object
            .pointer(&pointer)
            .and_then(|v| v.as_str())
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    /// JSON patch operations that set the [`VERIFIED_DIGESTS_ANNOTATION`] to `record`, creating the
    /// annotations map (or the metadata) where the object has none.
    pub fn record_patch(&self, record: &BTreeMap<String, String>) -> Vec<Value> {
        let metadata = self.metadata_pointer();
        let value = serde_json::to_string(record).unwrap_or_default();
        let key = VERIFIED_DIGESTS_ANNOTATION.replace('/', "~1");
        match self.object.pointer(&metadata) {
            Some(meta) if meta.get("annotations").is_some_and(|a| a.is_object()) => vec![
                serde_json::json!({"op": "add", "path": format!("{metadata}/annotations/{key}"), "value": value}),
            ],
            Some(_) => vec![serde_json::json!({
                "op": "add", "path": format!("{metadata}/annotations"),
                "value": {VERIFIED_DIGESTS_ANNOTATION: value}
            })],
            None => vec![serde_json::json!({
                "op": "add", "path": metadata,
                "value": {"annotations": {VERIFIED_DIGESTS_ANNOTATION: value}}
            })],
        }
    }

    /// Of `images` (this object's), the ones an UPDATE from `old` must have checked.
    ///
    /// A workload whose pod template changed (`spec.template`, a CronJob's
    /// `spec.jobTemplate.spec.template`: a new env var, `kubectl rollout restart`'s annotation, a new
    /// image) rolls out new pods: all of its images are checked, so that an image signed by no one that
    /// a workload kept from before its policy is refused at `kubectl apply`, where the user looks, and
    /// not only at the ReplicaSet's or Pod's CREATE that follows. The comparison includes the template's
    /// metadata and the webhook's own [`VERIFIED_DIGESTS_ANNOTATION`]: the mutating webhook patches only
    /// images it checks, so on an UPDATE that leaves the template alone it checks and patches nothing,
    /// and its patches can never make an unchanged template look changed (no loop with
    /// `reinvocationPolicy: IfNeeded` or a GitOps controller that re-applies).
    ///
    /// An UPDATE that leaves the template alone (scale, the workload's own labels and annotations,
    /// finalizers removed by the garbage collector) and any UPDATE of a Pod, whose running containers
    /// only an image field can change, starts nothing new: only image fields that are new or differ from
    /// the old object's are checked (a new ephemeral container, `kubectl set image`). What runs was
    /// checked when it was created, and an old workload whose image a policy now refuses can still be
    /// scaled down or deleted. All images are checked when the old object is missing or unreadable.
    pub fn changed_images(
        &self,
        images: Vec<ContainerImage>,
        old: Option<&Value>,
    ) -> Vec<ContainerImage> {
        let Some(old) = old else {
            return images;
        };
        if let Some(template) = pod_template_pointer(&self.kind) {
            let new_template = self.object.pointer(template);
            if new_template.is_none() || old.pointer(template) != new_template {
                return images;
            }
        }
        match images_of(&self.kind, old) {
            Ok(old) => images.into_iter().filter(|i| !old.contains(i)).collect(),
            Err(_) => images,
        }
    }

    /// The JSON pointer of the metadata that goes with the pod spec (the Pod's own, or the
    /// template's).
    fn metadata_pointer(&self) -> String {
        let spec = pod_spec_pointer(&self.kind).unwrap_or("/spec");
        match spec.strip_suffix("/spec") {
            Some(template) if !template.is_empty() => format!("{template}/metadata"),
            _ => "/metadata".to_owned(),
        }
    }
}

/// Every image of `object`, in container order. A container without an image is reported: the API
/// server would refuse it anyway, and an image we cannot see is not one we can admit.
fn images_of(kind: &str, object: &Value) -> Result<Vec<ContainerImage>, String> {
    let pointer = pod_spec_pointer(kind)
        .ok_or_else(|| format!("kind {kind} holds no pod spec that registryx-guard checks"))?;
    let Some(spec) = object.pointer(pointer) else {
        return Err(format!("the {kind} has no pod spec at {pointer}"));
    };
    let mut images = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = spec.get(list) else {
            continue;
        };
        let containers = containers
            .as_array()
            .ok_or_else(|| format!("{pointer}/{list} is not a list"))?;
        for (index, container) in containers.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
            let image = container
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{list}[{name}] has no image"))?;
            images.push(ContainerImage {
                pointer: format!("{pointer}/{list}/{index}/image"),
                container: format!("{list}[{name}]"),
                image: image.to_owned(),
            });
        }
    }
    // Image volumes (`volumes[].image.reference`, Kubernetes 1.31+) mount an OCI image's files into
    // containers: code an unsigned image could smuggle past a signed container.
    if let Some(volumes) = spec.get("volumes") {
        let volumes = volumes
            .as_array()
            .ok_or_else(|| format!("{pointer}/volumes is not a list"))?;
        for (index, volume) in volumes.iter().enumerate() {
            let Some(image) = volume.get("image") else {
                continue;
            };
            let name = volume.get("name").and_then(Value::as_str).unwrap_or("?");
            let reference = image
                .get("reference")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("volumes[{name}] is an image volume without a reference"))?;
            images.push(ContainerImage {
                pointer: format!("{pointer}/volumes/{index}/image/reference"),
                container: format!("volumes[{name}]"),
                image: reference.to_owned(),
            });
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A workload of `kind` whose pod template runs `image` with `env`, scaled to `replicas` (for a
    /// CronJob the template sits in its jobTemplate; for a DaemonSet `replicas` becomes a label of the
    /// workload itself, for a Job its parallelism: each kind's own "change that starts no new pod").
    fn workload(kind: &str, image: &str, env: &[(&str, &str)], replicas: u32) -> serde_json::Value {
        let env: Vec<_> = env
            .iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
            .collect();
        let template = serde_json::json!({
            "metadata": {"labels": {"app": "api"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "api", "image": image, "env": env}]},
        });
        let spec = match kind {
            "CronJob" => serde_json::json!({
                "schedule": "0 3 * * *",
                "suspend": replicas == 0,
                "jobTemplate": {"spec": {"template": template}},
            }),
            "Job" => serde_json::json!({"parallelism": replicas, "template": template}),
            "DaemonSet" => serde_json::json!({"template": template}),
            _ => serde_json::json!({"replicas": replicas, "template": template}),
        };
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": "api", "namespace": "payments", "labels": {"scale": replicas.to_string()}},
            "spec": spec,
        })
    }

    fn checked(kind: &str, old: serde_json::Value, new: serde_json::Value) -> Vec<String> {
        let workload = Workload::new(kind, new);
        let images = workload.images().unwrap();
        workload
            .changed_images(images, Some(&old))
            .into_iter()
            .map(|i| i.image)
            .collect()
    }

    #[test]
    fn a_changed_pod_template_is_a_new_rollout_and_checks_every_image() {
        let unsigned = "r.example/app@sha256:aa";
        for kind in [
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "ReplicationController",
            "Job",
            "CronJob",
        ] {
            // A new env var keeps the image: the template changed, the new pods run it all again.
            let old = workload(kind, unsigned, &[], 2);
            let new = workload(kind, unsigned, &[("MODE", "fast")], 2);
            assert_eq!(checked(kind, old, new), [unsigned], "{kind}: env changed");

            // Scale (or suspend, or a label of the workload itself): no new pod template, nothing
            // checked again, so that an old workload can still be scaled down or finalized.
            let old = workload(kind, unsigned, &[("MODE", "fast")], 2);
            let new = workload(kind, unsigned, &[("MODE", "fast")], 0);
            assert!(checked(kind, old, new).is_empty(), "{kind}: scale only");

            // The template's own metadata is the template too (`kubectl rollout restart` stamps an
            // annotation there and rolls every pod).
            let old = workload(kind, unsigned, &[], 2);
            let mut new = workload(kind, unsigned, &[], 2);
            let template = pod_template_pointer(kind).unwrap();
            new.pointer_mut(&format!("{template}/metadata"))
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(
                    "annotations".into(),
                    serde_json::json!({"kubectl.kubernetes.io/restartedAt": "2026-12-04T16:00:00Z"}),
                );
            assert_eq!(checked(kind, old, new), [unsigned], "{kind}: restart");
        }
    }

    #[test]
    fn a_pod_update_checks_only_the_images_it_changes() {
        // A Pod has no template: an UPDATE that keeps its images (labels, finalizers, an
        // activeDeadlineSeconds) starts nothing new, whatever else it changes.
        let pod = |image: &str, labels: serde_json::Value| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "labels": labels},
                "spec": {"activeDeadlineSeconds": 30, "containers": [{"name": "a", "image": image}]},
            })
        };
        let old = pod("r.example/app@sha256:aa", serde_json::json!({"a": "1"}));
        let new = pod("r.example/app@sha256:aa", serde_json::json!({"a": "2"}));
        assert!(checked("Pod", old.clone(), new).is_empty());
        let new = pod("r.example/app@sha256:bb", serde_json::json!({"a": "1"}));
        assert_eq!(checked("Pod", old, new), ["r.example/app@sha256:bb"]);
    }

    #[test]
    fn the_mutating_webhooks_own_record_never_makes_an_unchanged_template_changed() {
        // The mutating webhook patches only the images it checks (pins them, or records their digest
        // in the template's annotation). A scale-only UPDATE checks none, so its patch is empty, and
        // the object stored after a rollout (pinned and annotated) compared with its own scale is
        // unchanged: the webhook's patches can never start a loop of "changed" templates.
        let kind = "Deployment";
        let mut stored = workload(kind, "r.example/app:1@sha256:aa", &[], 2);
        let record = BTreeMap::from([("r.example/app:1".to_owned(), "sha256:aa".to_owned())]);
        let patch: json_patch::Patch = serde_json::from_value(
            Workload::new(kind, stored.clone())
                .record_patch(&record)
                .into(),
        )
        .unwrap();
        json_patch::patch(&mut stored, &patch).unwrap();
        let mut scaled = stored.clone();
        scaled["spec"]["replicas"] = 5.into();
        assert!(checked(kind, stored, scaled).is_empty());
    }

    #[test]
    fn finds_every_container_kind_in_pods_and_templates() {
        let spec = json!({
            "initContainers": [{"name": "init", "image": "r/init:1"}],
            "containers": [{"name": "app", "image": "r/app:1"}, {"name": "side", "image": "r/side:1"}],
            "ephemeralContainers": [{"name": "debug", "image": "r/debug:1"}],
        });
        let pod = json!({"spec": spec});
        let images = images_of("Pod", &pod).unwrap();
        let names: Vec<_> = images
            .iter()
            .map(|i| (i.container.as_str(), i.image.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("initContainers[init]", "r/init:1"),
                ("containers[app]", "r/app:1"),
                ("containers[side]", "r/side:1"),
                ("ephemeralContainers[debug]", "r/debug:1")
            ]
        );
        assert_eq!(images[1].pointer, "/spec/containers/0/image");

        let with_volume = json!({"spec": {
            "containers": [{"name": "app", "image": "r/app:1"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "data", "image": {"reference": "r/data:1"}}],
        }});
        let images = images_of("Pod", &with_volume).unwrap();
        assert_eq!(images[1].image, "r/data:1");
        assert_eq!(images[1].pointer, "/spec/volumes/1/image/reference");
        assert_eq!(images[1].container, "volumes[data]");

        let deployment = json!({"spec": {"template": {"spec": spec}}});
        assert_eq!(images_of("Deployment", &deployment).unwrap().len(), 4);
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        let images = images_of("CronJob", &cron).unwrap();
        assert_eq!(
            images[0].pointer,
            "/spec/jobTemplate/spec/template/spec/initContainers/0/image"
        );
    }

    #[test]
    fn malformed_objects_are_errors_not_silence() {
        assert!(
            images_of("ConfigMap", &json!({}))
                .unwrap_err()
                .contains("holds no pod spec")
        );
        assert!(
            images_of("Pod", &json!({"metadata": {}}))
                .unwrap_err()
                .contains("no pod spec")
        );
        assert!(
            images_of("Pod", &json!({"spec": {"containers": {}}}))
                .unwrap_err()
                .contains("not a list")
        );
        assert!(
            images_of("Pod", &json!({"spec": {"containers": [{"name": "x"}]}}))
                .unwrap_err()
                .contains("has no image")
        );
    }
}
