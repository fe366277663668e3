//! Admission decisions: extracts every image of a Pod or pod template, finds the policies that govern
//! each (image globs x namespaceSelector), verifies, and turns the verdicts into an AdmissionResponse:
//! deny with a message that names image, digest, policy, authority and remedy; allow with warnings for
//! `warn` policies; a JSON patch that pins verified digests for `mutateDigest` policies.
//!
//! Business logic only: no HTTP here (see `server`), so that it is tested on typed requests.

mod images;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;
use tokio::sync::Semaphore;

pub use images::{ContainerImage, images_of, pod_spec_pointer};
pub use metrics::AdmissionMetrics;

use crate::policy::{Mode, SharedSnapshot};
use crate::registry::ImageRef;
use crate::rego::{RegoPod, RegoRequest, RegoUserInfo};
use crate::verify::{ImageVerdict, RequestContext, Verifier};

/// How the webhook decides what no policy speaks about, and how much it does at once.
#[derive(Clone, Debug)]
pub struct AdmissionSettings {
    /// Refuse images that no policy governs.
    pub default_deny: bool,
    /// Image verifications in flight at once, over all requests.
    pub max_concurrent_verifications: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            default_deny: false,
            max_concurrent_verifications: 64,
        }
    }
}

/// The admission engine, shared by every request.
pub struct Admission {
    snapshot: SharedSnapshot,
    verifier: Arc<Verifier>,
    namespaces: Option<Store<Namespace>>,
    settings: AdmissionSettings,
    permits: Semaphore,
    metrics: Option<AdmissionMetrics>,
}

/// What was decided about one image.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDecision {
    pub container: String,
    pub image: String,
    pub admitted: bool,
    /// One line for kubectl; the verdict holds the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ImageVerdict>,
    #[serde(skip)]
    reason_label: &'static str,
}

impl ImageDecision {
    fn refused(mut self, refusal: String, reason_label: &'static str) -> ImageDecision {
        self.admitted = false;
        self.refusal = Some(refusal);
        self.reason_label = reason_label;
        self
    }
}

impl Admission {
    pub fn new(
        snapshot: SharedSnapshot,
        verifier: Arc<Verifier>,
        namespaces: Option<Store<Namespace>>,
        settings: AdmissionSettings,
        metrics: Option<AdmissionMetrics>,
    ) -> Admission {
        Admission {
            permits: Semaphore::new(settings.max_concurrent_verifications.max(1)),
            snapshot,
            verifier,
            namespaces,
            settings,
            metrics,
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Decides one request. `mutate` asks for the digest-pinning patch instead of a verdict: the mutating
    /// webhook never refuses (the validating one does), it only pins what verified.
    #[tracing::instrument(skip_all, fields(uid = %request.uid, kind = %request.kind.kind, namespace = request.namespace.as_deref().unwrap_or(""), name = %request.name))]
    pub async fn review(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        deadline: Instant,
        mutate: bool,
    ) -> AdmissionResponse {
        let started = Instant::now();
        let response = AdmissionResponse::from(request);
        if matches!(request.operation, Operation::Delete | Operation::Connect) {
            return response;
        }
        let Some(object) = &request.object else {
            return response;
        };
        let object = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(error) => {
                return response.deny(format!("registryx-guard cannot read the object: {error}"));
            }
        };
        let kind = request.kind.kind.as_str();
        let images = match images_of(kind, &object) {
            Ok(images) => images,
            Err(error) => {
                self.count("deny", "none", "malformed");
                return response.deny(format!("registryx-guard cannot check this {kind}: {error}"));
            }
        };
        let labels = self.namespace_labels(request.namespace.as_deref());
        let context = request_context(request, kind, &object, labels.as_ref());
        let decisions = join_all(
            images
                .iter()
                .map(|image| self.decide_image(image, labels.as_ref(), &context, deadline)),
        )
        .await;

        let response = if mutate {
            self.pin_digests(response, &images, &decisions)
        } else {
            self.verdict_response(response, &decisions)
        };
        if let Some(metrics) = &self.metrics {
            metrics.duration.observe(started.elapsed().as_secs_f64());
        }
        tracing::info!(
            allowed = response.allowed,
            mutate,
            images = images.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            decisions = %serde_json::to_string(&decisions).unwrap_or_default(),
            "admission decision"
        );
        response
    }

    fn namespace_labels(&self, namespace: Option<&str>) -> Option<BTreeMap<String, String>> {
        let (store, namespace) = (self.namespaces.as_ref()?, namespace?);
        let found = store.get(&ObjectRef::new(namespace));
        // A namespace not yet in the cache has no labels we know: selectors then match as if it had none.
        Some(
            found
                .and_then(|ns| ns.metadata.labels.clone())
                .unwrap_or_default(),
        )
    }

    async fn decide_image(
        &self,
        container: &ContainerImage,
        labels: Option<&BTreeMap<String, String>>,
        context: &RequestContext,
        deadline: Instant,
    ) -> ImageDecision {
        let mut decision = ImageDecision {
            container: container.container.clone(),
            image: container.image.clone(),
            admitted: true,
            refusal: None,
            warnings: Vec::new(),
            verdict: None,
            reason_label: "no_policy",
        };
        let image = match ImageRef::parse(&container.image) {
            Ok(image) => image,
            Err(error) => {
                return decision.refused(
                    format!("{}: {error}", container.container),
                    "invalid_reference",
                );
            }
        };
        let snapshot = self.snapshot.load();
        let governing = snapshot.governing(&image, labels);
        if !governing.not_ready.is_empty() {
            let reasons: Vec<String> = governing
                .not_ready
                .iter()
                .map(|(name, message)| format!("policy {name} is not ready: {message}"))
                .collect();
            return decision.refused(
                format!("image {}: {}", container.image, reasons.join("; ")),
                "not_ready",
            );
        }
        if governing.policies.is_empty() {
            if self.settings.default_deny {
                let refusal = format!(
                    "image {}: no ImageSigningPolicy governs it, and registryx-guard runs with --default-deny",
                    container.image
                );
                return decision.refused(refusal, "no_policy");
            }
            return decision;
        }
        let verdict = {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.permits.acquire()).await {
                Ok(Ok(_permit)) => {
                    self.verifier
                        .verify_in(&image, &governing.policies, context, deadline)
                        .await
                }
                _ => {
                    let refusal = format!(
                        "image {}: not verified before the deadline (too many verifications at once)",
                        container.image
                    );
                    return decision.refused(refusal, "registry");
                }
            }
        };
        decision.admitted = verdict.admitted();
        decision.reason_label = if decision.admitted {
            "verified"
        } else {
            reason_label(&verdict)
        };
        let digest = verdict.digest.as_deref().unwrap_or("digest unknown");
        for policy in verdict.warnings() {
            decision.warnings.push(format!(
                "image {} ({digest}) fails policy {} (warn mode): {}",
                container.image,
                policy.policy,
                policy.reasons.join("; ")
            ));
        }
        if !decision.admitted {
            let failed: Vec<String> = verdict
                .policies
                .iter()
                .filter(|p| !p.passed && p.mode == Mode::Enforce)
                .map(|p| {
                    let remedy = p
                        .remedy
                        .as_deref()
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default();
                    format!("policy {}: {}{remedy}", p.policy, p.reasons.join("; "))
                })
                .collect();
            decision.refusal = Some(format!(
                "image {} ({digest}) refused by {}",
                container.image,
                failed.join(" | ")
            ));
        }
        decision.verdict = Some(verdict);
        decision
    }

    fn verdict_response(
        &self,
        mut response: AdmissionResponse,
        decisions: &[ImageDecision],
    ) -> AdmissionResponse {
        let mut verified = Vec::new();
        for decision in decisions {
            let policy_names: Vec<&str> = decision
                .verdict
                .iter()
                .flat_map(|v| v.policies.iter().map(|p| p.policy.as_str()))
                .collect();
            let outcome = match (decision.admitted, decision.warnings.is_empty()) {
                (false, _) => "deny",
                (true, false) => "warn",
                (true, true) => "allow",
            };
            if policy_names.is_empty() {
                self.count(outcome, "none", decision.reason_label);
            }
            for policy in &policy_names {
                self.count(outcome, policy, decision.reason_label);
            }
            if let Some(verdict) = decision.verdict.as_ref().filter(|_| decision.admitted) {
                let authorities: Vec<&str> = verdict
                    .policies
                    .iter()
                    .flat_map(|p| {
                        p.authorities
                            .iter()
                            .filter(|e| e.verified)
                            .map(|e| e.authority.as_str())
                    })
                    .collect();
                verified.push(serde_json::json!({"image": decision.image, "digest": verdict.digest, "authorities": authorities}));
            }
        }
        let warnings: Vec<String> = decisions
            .iter()
            .flat_map(|d| d.warnings.iter().cloned())
            .collect();
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        if !verified.is_empty() {
            response.audit_annotations = HashMap::from([(
                "verified-images".to_owned(),
                serde_json::Value::from(verified).to_string(),
            )]);
        }
        let refusals: Vec<&str> = decisions
            .iter()
            .filter_map(|d| d.refusal.as_deref())
            .collect();
        if refusals.is_empty() {
            response
        } else {
            response.deny(refusals.join("\n"))
        }
    }

    /// The patch that pins each verified image of a `mutateDigest` policy to its verified digest.
    fn pin_digests(
        &self,
        response: AdmissionResponse,
        images: &[ContainerImage],
        decisions: &[ImageDecision],
    ) -> AdmissionResponse {
        let mut operations = Vec::new();
        for (container, decision) in images.iter().zip(decisions) {
            let Some(verdict) = decision.verdict.as_ref().filter(|_| decision.admitted) else {
                continue;
            };
            let pin = verdict
                .policies
                .iter()
                .any(|p| p.passed && self.mutates(&p.policy));
            let (Some(digest), true) = (verdict.digest.as_deref(), pin) else {
                continue;
            };
            if container.image.contains('@') {
                continue; // already pinned; validation checked that very digest
            }
            let pinned = format!("{}@{digest}", container.image);
            match serde_json::from_value::<json_patch::PatchOperation>(
                serde_json::json!({"op": "replace", "path": container.pointer, "value": pinned}),
            ) {
                Ok(operation) => operations.push(operation),
                Err(error) => tracing::warn!(%error, "cannot build a digest patch"),
            }
        }
        if operations.is_empty() {
            return response;
        }
        match response.clone().with_patch(json_patch::Patch(operations)) {
            Ok(patched) => patched,
            Err(error) => {
                tracing::warn!(%error, "cannot serialize the digest patch; admitting unpatched");
                response
            }
        }
    }

    fn mutates(&self, policy: &str) -> bool {
        self.snapshot
            .load()
            .policies
            .iter()
            .any(|p| p.name == policy && p.mutate_digest)
    }

    fn count(&self, decision: &str, policy: &str, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.count(decision, policy, reason);
        }
    }
}

/// The workload as Rego sees it: the request, the namespace and the pod's metadata.
fn request_context(
    request: &AdmissionRequest<DynamicObject>,
    kind: &str,
    object: &serde_json::Value,
    labels: Option<&BTreeMap<String, String>>,
) -> RequestContext {
    let spec = pod_spec_pointer(kind).unwrap_or("/spec");
    let metadata = if kind == "Pod" {
        "/metadata".to_owned()
    } else {
        format!("{}/metadata", spec.trim_end_matches("/spec"))
    };
    let map = |pointer: String| -> BTreeMap<String, String> {
        object
            .pointer(&pointer)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let user = &request.user_info;
    RequestContext {
        namespace: request.namespace.clone(),
        namespace_labels: labels.cloned().unwrap_or_default(),
        request: Some(RegoRequest {
            kind: kind.to_owned(),
            operation: format!("{:?}", request.operation).to_uppercase(),
            name: Some(request.name.clone()).filter(|n| !n.is_empty()),
            namespace: request.namespace.clone(),
            user_info: RegoUserInfo {
                username: user.username.clone().unwrap_or_default(),
                uid: user.uid.clone(),
                groups: user.groups.clone().unwrap_or_default(),
                extra: user.extra.clone().unwrap_or_default().into_iter().collect(),
            },
        }),
        pod: Some(RegoPod {
            labels: map(format!("{metadata}/labels")),
            annotations: map(format!("{metadata}/annotations")),
            service_account_name: object
                .pointer(&format!("{spec}/serviceAccountName"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        }),
    }
}

/// A metrics label for why a verdict refused.
fn reason_label(verdict: &ImageVerdict) -> &'static str {
    let reasons: String = verdict
        .policies
        .iter()
        .flat_map(|p| p.reasons.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    if reasons.contains("Rego") || reasons.contains("rego") {
        "rego"
    } else if reasons.contains("cannot resolve") || reasons.contains("cannot read the signatures") {
        "registry"
    } else {
        "unsigned"
    }
}
