//! Where images live in the objects the webhook admits: the containers, init containers and ephemeral
//! containers of a pod spec, found in a Pod, in the pod template of a workload controller, or in the
//! job template of a CronJob.

use serde_json::Value;

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
/// Any change under it is a new rollout of pods; see `admission::images_to_check`.
pub fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => None,
        _ => pod_spec_pointer(kind)?.strip_suffix("/spec"),
    }
}

/// Every image of `object`, in container order. A container without an image is reported: the API
/// server would refuse it anyway, and an image we cannot see is not one we can admit.
pub fn images_of(kind: &str, object: &Value) -> Result<Vec<ContainerImage>, String> {
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
