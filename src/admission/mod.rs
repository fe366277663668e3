//! Admission decisions: extracts every image of a Pod or pod template, finds the policies that govern
//! each (image globs x namespaceSelector), verifies, and turns the verdicts into an AdmissionResponse:
//! deny with a message that names image, digest, policy, authority and remedy; allow with warnings for
//! `warn` policies; a JSON patch that pins verified digests for `mutateDigest` policies.
//!
//! Business logic only: no HTTP here (see `server`), so that it is tested on typed requests.

pub mod events;
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

pub use images::{ContainerImage, images_of, pod_spec_pointer, pod_template_pointer};
pub use metrics::AdmissionMetrics;

use crate::decide::{RequestContext, decide};
use crate::policy::{Mode, SharedSnapshot};
use crate::registry::ImageRef;
use crate::rego::{RegoPod, RegoRequest, RegoUserInfo};
use crate::verify::{ImageVerdict, Verifier};

/// The default cap on distinct images in one object: real pods name a handful; a pod naming hundreds is
/// an attempt to make one review cost hundreds of registry round trips.
pub const MAX_IMAGES_PER_REVIEW: usize = 64;

/// The most one image's refusal (or one warning) may take, in bytes. Registry text is bounded where it is
/// read (`crate::untrusted`); this is the last bound, whatever a future path forgets: a refusal is cached,
/// logged, written into an Event and shown by kubectl, and a few KiB say everything a user can act on.
pub const MAX_REFUSAL_BYTES: usize = 4 << 10;

/// The most the message of one AdmissionResponse may take: [`MAX_IMAGES_PER_REVIEW`] refusals of
/// [`MAX_REFUSAL_BYTES`] would be 256 KiB in one kubectl error; past this, the rest are counted.
pub const MAX_RESPONSE_MESSAGE_BYTES: usize = 32 << 10;

/// Warnings the API server passes on: it drops warnings past 4,096 characters in all, so more from
/// here would only cost memory.
const MAX_WARNINGS: usize = 16;

/// What the webhook does with an image that no policy governs.
///
/// `Deny` is the default, as in sigstore's policy-controller: namespaces opt in, and inside them an
/// image no policy vouches for is refused. Spelling can never recognise an IP literal or a DNS alias of
/// a governed registry, so refusing the unmatched is the only answer that closes those doors. `Warn`
/// admits with an admission warning and `Allow` admits silently, for a gradual roll-out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Deny,
    Warn,
    Allow,
}

/// How the webhook decides what no policy speaks about, and how much it does at once.
#[derive(Clone, Debug)]
pub struct AdmissionSettings {
    /// What happens to images that no policy governs.
    pub unmatched: Unmatched,
    /// Image verifications in flight at once for one registry, over all requests: a bulkhead, so that a
    /// registry that hangs holds only its own slots and never refuses another registry's images.
    pub max_concurrent_verifications: usize,
    /// Distinct images one object may name; an object naming more is refused with the reason.
    pub max_images_per_review: usize,
    /// Rego's `input.environment` for namespaces that label none (`--environment`).
    pub environment: Option<String>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            unmatched: Unmatched::Deny,
            max_concurrent_verifications: 32,
            max_images_per_review: MAX_IMAGES_PER_REVIEW,
            environment: None,
        }
    }
}

/// The annotation on a Pod (or a pod template) that records, for images whose policies do not pin
/// (`mutateDigest: false`), the digest each tag had when it was verified: `{"<image>": "sha256:..."}`.
/// A later admission whose tag resolves elsewhere is refused: the tag moved after it was verified.
pub const VERIFIED_DIGESTS_ANNOTATION: &str = "registryx.io/verified-digests";

/// The admission engine, shared by every request.
pub struct Admission {
    snapshot: SharedSnapshot,
    verifier: Arc<Verifier>,
    namespaces: Option<Store<Namespace>>,
    /// Reads a namespace that the cache does not hold yet (a namespace created a moment ago).
    namespace_api: Option<kube::Api<Namespace>>,
    settings: AdmissionSettings,
    /// Verification slots per canonical registry (bounded, evicted when idle).
    registry_permits: moka::sync::Cache<String, Arc<Semaphore>>,
    metrics: Option<AdmissionMetrics>,
    events: Option<events::RefusalEvents>,
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
    pub verdict: Option<Arc<ImageVerdict>>,
    #[serde(skip)]
    reason_label: &'static str,
    /// Some governing policy pins admitted tags to their verified digest.
    #[serde(skip)]
    pins: bool,
}

impl ImageDecision {
    /// The decision with its refusal and warnings within [`MAX_REFUSAL_BYTES`] each.
    fn bounded(mut self) -> ImageDecision {
        if let Some(refusal) = &mut self.refusal
            && refusal.len() > MAX_REFUSAL_BYTES
        {
            *refusal = crate::untrusted::bound(refusal, MAX_REFUSAL_BYTES);
        }
        for warning in &mut self.warnings {
            if warning.len() > MAX_REFUSAL_BYTES {
                *warning = crate::untrusted::bound(warning, MAX_REFUSAL_BYTES);
            }
        }
        self.warnings.truncate(MAX_WARNINGS);
        self
    }

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
            registry_permits: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
            snapshot,
            verifier,
            namespaces,
            namespace_api: None,
            settings,
            metrics,
            events: None,
        }
    }

    /// Writes a Warning event on each policy that refuses an image (see [`events`]).
    pub fn with_refusal_events(mut self, events: events::RefusalEvents) -> Admission {
        self.events = Some(events);
        self
    }

    /// Looks namespaces missing from the cache up in the API server instead of refusing their images.
    pub fn with_namespace_lookup(mut self, client: kube::Client) -> Admission {
        self.namespace_api = Some(kube::Api::all(client));
        self
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
        // An UPDATE is checked for what it starts: every image of a changed pod template (a new
        // rollout), and otherwise only the image fields that are new or differ from the old object's
        // (see `changed_images`).
        let images = match request.operation {
            Operation::Update => changed_images(kind, images, &object, request),
            _ => images,
        };
        if images.is_empty() {
            return response;
        }
        let labels = match self
            .namespace_labels(request.namespace.as_deref(), deadline)
            .await
        {
            Ok(labels) => labels,
            Err(reason) => {
                self.count("deny", "none", "namespace_unknown");
                return response.deny(format!("registryx-guard cannot decide: {reason}"));
            }
        };
        let context = request_context(
            request,
            kind,
            &object,
            labels.as_ref(),
            self.settings.environment.clone(),
        );
        let recorded = recorded_digests(kind, &object);
        // Each distinct image is decided once, however many containers name it.
        let mut distinct: Vec<&ContainerImage> = Vec::new();
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        let slots: Vec<usize> = images
            .iter()
            .map(|image| {
                *index_of.entry(image.image.as_str()).or_insert_with(|| {
                    distinct.push(image);
                    distinct.len() - 1
                })
            })
            .collect();
        if distinct.len() > self.settings.max_images_per_review {
            self.count("deny", "none", "too_many_images");
            return response.deny(format!(
                "this {kind} names {} distinct images; registryx-guard checks at most {} in one object",
                distinct.len(),
                self.settings.max_images_per_review
            ));
        }
        let decided: Vec<ImageDecision> = join_all(distinct.iter().map(|image| async {
            self.decide_image(
                image,
                labels.as_ref(),
                &context,
                deadline,
                &recorded,
                mutate,
            )
            .await
            .bounded()
        }))
        .await;
        let decisions: Vec<ImageDecision> = images
            .iter()
            .zip(&slots)
            .map(|(image, slot)| ImageDecision {
                container: image.container.clone(),
                ..decided[*slot].clone()
            })
            .collect();

        let response = if mutate {
            self.pin_digests(response, kind, &object, &images, &decisions, &recorded)
        } else {
            if !request.dry_run {
                self.publish_refusals(request, &decided);
            }
            self.verdict_response(response, &decisions)
        };
        if let Some(metrics) = &self.metrics {
            metrics.duration.observe(started.elapsed().as_secs_f64());
        }
        // Serializing the decisions is most of a cached review's logging cost: only when logged.
        if tracing::enabled!(tracing::Level::INFO) {
            let (logged, omitted) = logged_decisions(&decided);
            tracing::info!(
                allowed = response.allowed,
                mutate,
                images = images.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                decisions = %logged,
                decisions_omitted = omitted,
                "admission decision"
            );
        }
        response
    }

    /// The labels of `namespace`, from the cache or, for a namespace the cache does not hold yet, from
    /// the API server. A namespace whose labels cannot be known is an error, never "no labels": a
    /// `namespaceSelector` would otherwise decide on labels the namespace does not have.
    async fn namespace_labels(
        &self,
        namespace: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        let (Some(store), Some(namespace)) = (self.namespaces.as_ref(), namespace) else {
            return Ok(None);
        };
        if let Some(found) = store.get(&ObjectRef::new(namespace)) {
            return Ok(Some(found.metadata.labels.clone().unwrap_or_default()));
        }
        let Some(api) = &self.namespace_api else {
            return Err(format!(
                "the labels of namespace {namespace} are not known yet; retry in a moment"
            ));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, api.get_opt(namespace)).await {
            Ok(Ok(Some(found))) => Ok(Some(found.metadata.labels.unwrap_or_default())),
            Ok(Ok(None)) => Err(format!("namespace {namespace} does not exist")),
            Ok(Err(error)) => Err(format!(
                "cannot read the labels of namespace {namespace}: {error}"
            )),
            Err(_) => Err(format!(
                "the labels of namespace {namespace} could not be read before the deadline"
            )),
        }
    }

    async fn decide_image(
        &self,
        container: &ContainerImage,
        labels: Option<&BTreeMap<String, String>>,
        context: &RequestContext,
        deadline: Instant,
        recorded: &BTreeMap<String, String>,
        mutate: bool,
    ) -> ImageDecision {
        let mut decision = ImageDecision {
            container: container.container.clone(),
            image: container.image.clone(),
            admitted: true,
            refusal: None,
            warnings: Vec::new(),
            verdict: None,
            reason_label: "no_policy",
            pins: false,
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
            let why = format!(
                "image {} (canonically {image}) is governed by no ImageSigningPolicy",
                container.image
            );
            match self.settings.unmatched {
                Unmatched::Allow => {}
                Unmatched::Warn => decision.warnings.push(format!(
                    "{why}; it is admitted only because registryx-guard runs with --unmatched=warn"
                )),
                Unmatched::Deny => {
                    let refusal = format!(
                        "{why}, and registryx-guard admits only images a policy vouches for; \
                         add this image to the spec.images of a policy that verifies it"
                    );
                    return decision.refused(refusal, "no_policy");
                }
            }
            return decision;
        }
        let (policies, verdict) = {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let slots = self.registry_permits.get_with_by_ref(&image.registry, || {
                Arc::new(Semaphore::new(
                    self.settings.max_concurrent_verifications.max(1),
                ))
            });
            match tokio::time::timeout(remaining, slots.acquire()).await {
                Ok(Ok(_permit)) => {
                    // Inside the registry's bulkhead: settling may ask the registry what the tag names.
                    let policies = crate::decide::settle_policies(
                        &self.verifier,
                        &image,
                        governing.policies,
                        governing.if_tag_names_digest,
                        deadline,
                    )
                    .await;
                    let verdict =
                        decide(&self.verifier, &image, &policies, context, deadline).await;
                    (policies, verdict)
                }
                _ => {
                    let refusal = format!(
                        "image {}: not verified before the deadline: registry {} has {} verifications \
                         in flight already (is it slow or down?)",
                        container.image, image.registry, self.settings.max_concurrent_verifications
                    );
                    return decision.refused(refusal, "unreachable");
                }
            }
        };
        decision.pins = policies.iter().any(|p| p.mutate_digest);
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
        if decision.admitted && image.digest.is_none() && !mutate {
            self.check_pinned(&mut decision, &image, &verdict, &policies, recorded);
        }
        decision.verdict = Some(Arc::new(verdict));
        decision
    }

    /// What runs must be what was verified. An admitted tag that a pinning policy governs should have
    /// reached validation pinned by the mutating webhook; a bare tag here means the mutation failed or was
    /// skipped, and the tag could move before the node pulls it: refused (a warning for `warn` policies).
    /// For policies that do not pin, the digest recorded at the workload's admission must still be the
    /// one the tag names.
    fn check_pinned(
        &self,
        decision: &mut ImageDecision,
        image: &ImageRef,
        verdict: &ImageVerdict,
        policies: &[Arc<crate::policy::CompiledPolicy>],
        recorded: &BTreeMap<String, String>,
    ) {
        let Some(digest) = verdict.digest.as_deref() else {
            return;
        };
        let pinned = format!("{}@{digest}", decision.image);
        let pinning = policies.iter().filter(|p| p.mutate_digest);
        let (enforcing, warning): (Vec<_>, Vec<_>) = pinning.partition(|p| p.mode == Mode::Enforce);
        let names = |list: &[&Arc<crate::policy::CompiledPolicy>]| {
            list.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unpinned = |names: String| {
            format!(
                "image {} is a tag, and policy {names} admits only what is pinned to the digest it \
                 verified (the mutating webhook pins it; it did not run for this request): name the image \
                 {pinned}, or check that the MutatingWebhookConfiguration of registryx-guard is installed",
                decision.image
            )
        };
        if !warning.is_empty() {
            decision.warnings.push(unpinned(names(&warning)));
        }
        if !enforcing.is_empty() {
            let refusal = unpinned(names(&enforcing));
            *decision = decision.clone().refused(refusal, "unpinned");
            return;
        }
        if let Some(admitted_as) = recorded.get(&decision.image)
            && admitted_as != digest
        {
            let refusal = format!(
                "image {} ({image}) now names {digest}, but the workload was admitted when it named \
                 {admitted_as} (annotation {VERIFIED_DIGESTS_ANNOTATION}): the tag moved after it was \
                 verified; pin the image by digest, or remove the annotation to accept the new digest",
                decision.image
            );
            *decision = decision.clone().refused(refusal, "tag_moved");
        }
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
            let first = !decisions
                .iter()
                .take_while(|d| !std::ptr::eq(*d, decision))
                .any(|d| d.image == decision.image);
            if let Some(verdict) = decision
                .verdict
                .as_ref()
                .filter(|_| decision.admitted && first)
            {
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
        let mut warnings: Vec<String> = Vec::new();
        for warning in decisions.iter().flat_map(|d| d.warnings.iter()) {
            if !warnings.contains(warning) {
                warnings.push(warning.clone());
            }
        }
        if !warnings.is_empty() {
            warnings.truncate(MAX_WARNINGS);
            response.warnings = Some(warnings);
        }
        if !verified.is_empty() {
            response.audit_annotations = HashMap::from([(
                "verified-images".to_owned(),
                serde_json::Value::from(verified).to_string(),
            )]);
        }
        let mut refusals: Vec<&str> = Vec::new();
        for refusal in decisions.iter().filter_map(|d| d.refusal.as_deref()) {
            if !refusals.contains(&refusal) {
                refusals.push(refusal);
            }
        }
        if refusals.is_empty() {
            return response;
        }
        let mut message = String::new();
        for (shown, refusal) in refusals.iter().enumerate() {
            if message.len() + refusal.len() + 1 > MAX_RESPONSE_MESSAGE_BYTES {
                message.push_str(&format!(
                    "\n… and {} more images refused (the webhook's decision log has each)",
                    refusals.len() - shown
                ));
                break;
            }
            if !message.is_empty() {
                message.push('\n');
            }
            message.push_str(refusal);
        }
        response.deny(message)
    }

    /// The patch of the mutating webhook: each verified tag of a pinning policy becomes
    /// `image:tag@digest`; each verified tag whose policies do not pin is recorded in the
    /// [`VERIFIED_DIGESTS_ANNOTATION`] of the pod (template), unless an earlier admission recorded it.
    fn pin_digests(
        &self,
        response: AdmissionResponse,
        kind: &str,
        object: &serde_json::Value,
        images: &[ContainerImage],
        decisions: &[ImageDecision],
        recorded: &BTreeMap<String, String>,
    ) -> AdmissionResponse {
        let mut operations = Vec::new();
        let mut record = recorded.clone();
        for (container, decision) in images.iter().zip(decisions) {
            let Some(verdict) = decision.verdict.as_ref().filter(|_| decision.admitted) else {
                continue;
            };
            let Some(digest) = verdict.digest.as_deref() else {
                continue;
            };
            if container.image.contains('@') {
                continue; // already pinned; validation checks that very digest
            }
            if decision.pins {
                let pinned = format!("{}@{digest}", container.image);
                operations.push(serde_json::json!({"op": "replace", "path": container.pointer, "value": pinned}));
            } else {
                record
                    .entry(container.image.clone())
                    .or_insert_with(|| digest.to_owned());
            }
        }
        if record != *recorded {
            operations.extend(annotation_patch(kind, object, &record));
        }
        if operations.is_empty() {
            return response;
        }
        let patch = match serde_json::from_value::<json_patch::Patch>(operations.into()) {
            Ok(patch) => patch,
            Err(error) => {
                tracing::warn!(%error, "cannot build the digest patch; validation refuses what is unpinned");
                return response;
            }
        };
        match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(error) => {
                tracing::warn!(%error, "cannot serialize the digest patch; validation refuses what is unpinned");
                response
            }
        }
    }

    /// One event per (refused image, enforcing policy that refused it), on the policy.
    fn publish_refusals(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        decided: &[ImageDecision],
    ) {
        let Some(events) = &self.events else {
            return;
        };
        let name = if request.name.is_empty() {
            "(name not yet generated)"
        } else {
            request.name.as_str()
        };
        let workload = match request.namespace.as_deref() {
            Some(namespace) => format!("{} {namespace}/{name}", request.kind.kind),
            None => format!("{} {name}", request.kind.kind),
        };
        for decision in decided.iter().filter(|d| !d.admitted) {
            let (Some(verdict), Some(message)) = (&decision.verdict, &decision.refusal) else {
                continue;
            };
            for policy in verdict
                .policies
                .iter()
                .filter(|p| !p.passed && p.mode == Mode::Enforce)
            {
                events.refused(events::Refusal {
                    policy: &policy.policy,
                    policy_uid: policy.policy_uid.as_deref(),
                    reason: policy
                        .reason_kind
                        .map_or("refused", crate::verify::reason::Reason::label),
                    workload: workload.clone(),
                    message,
                });
            }
        }
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
    default_environment: Option<String>,
) -> RequestContext {
    let user = &request.user_info;
    RequestContext {
        namespace: request.namespace.clone(),
        namespace_labels: labels.cloned().unwrap_or_default(),
        default_environment,
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
        pod: Some(pod_of(kind, object)),
        keep_rego_input: false,
    }
}

/// The longest decision text one log line carries: a pod naming many images must not make a line of
/// megabytes (log pipelines drop or split those).
const MAX_LOGGED_DECISIONS_BYTES: usize = 16 << 10;

/// How an image admitted without a warning is logged: what ran and who vouched for it. Its whole
/// verdict (every authority's evidence) would make each cached review's line ~2 KB and cost a fifth of
/// the server's throughput; refusals and warnings, which someone has to act on, keep theirs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmittedSummary<'a> {
    container: &'a str,
    image: &'a str,
    admitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    /// `policy/authority` of every authority that verified a signature.
    verified_by: Vec<String>,
    /// Policies that passed without a signature requirement or only through Rego.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    passed: Vec<&'a str>,
}

impl<'a> AdmittedSummary<'a> {
    fn of(decision: &'a ImageDecision) -> AdmittedSummary<'a> {
        let verdict = decision.verdict.as_deref();
        let policies = verdict.map_or(&[][..], |v| &v.policies[..]);
        AdmittedSummary {
            container: &decision.container,
            image: &decision.image,
            admitted: true,
            digest: verdict.and_then(|v| v.digest.as_deref()),
            verified_by: policies
                .iter()
                .flat_map(|p| {
                    p.authorities
                        .iter()
                        .filter(|a| a.verified)
                        .map(move |a| format!("{}/{}", p.policy, a.authority))
                })
                .collect(),
            passed: policies
                .iter()
                .filter(|p| p.passed && !p.authorities.iter().any(|a| a.verified))
                .map(|p| p.policy.as_str())
                .collect(),
        }
    }
}

/// The decisions as a JSON array for the log line, and how many were left out: whole decisions are
/// kept while they fit in [`MAX_LOGGED_DECISIONS_BYTES`], so the array stays valid JSON that log
/// pipelines read as objects (the JSON log format writes it as one, see `telemetry`). An image admitted
/// without a warning is logged as its [`AdmittedSummary`].
fn logged_decisions(decided: &[ImageDecision]) -> (String, usize) {
    let mut text = String::from("[");
    let mut kept = 0;
    for decision in decided {
        let full = if decision.admitted && decision.warnings.is_empty() {
            serde_json::to_string(&AdmittedSummary::of(decision))
        } else {
            serde_json::to_string(decision)
        }
        .unwrap_or_default();
        // A decision too large to log whole (many policies x authorities x platforms) is logged as its
        // summary: image, container, admitted, reason and the refusal's first 512 bytes.
        let one = if text.len() + full.len() + 2 <= MAX_LOGGED_DECISIONS_BYTES {
            full
        } else {
            let mut refusal = decision.refusal.clone().unwrap_or_default();
            refusal.truncate(refusal.floor_char_boundary(512));
            serde_json::json!({
                "container": decision.container,
                "image": decision.image,
                "admitted": decision.admitted,
                "reason": decision.reason_label,
                "refusal": refusal,
                "summarized": true,
            })
            .to_string()
        };
        if text.len() + one.len() + 2 > MAX_LOGGED_DECISIONS_BYTES {
            continue;
        }
        if kept > 0 {
            text.push(',');
        }
        text.push_str(&one);
        kept += 1;
    }
    text.push(']');
    (text, decided.len() - kept)
}

/// The pod (or pod template) of an object of `kind` as Rego sees it: labels, annotations, service
/// account. Used by admission and by `verify --resource` alike.
pub fn pod_of(kind: &str, object: &serde_json::Value) -> RegoPod {
    let metadata = pod_metadata_pointer(kind);
    let spec = pod_spec_pointer(kind).unwrap_or("/spec");
    let map = |pointer: String| -> BTreeMap<String, String> {
        object
            .pointer(&pointer)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    RegoPod {
        labels: map(format!("{metadata}/labels")),
        annotations: map(format!("{metadata}/annotations")),
        service_account_name: object
            .pointer(&format!("{spec}/serviceAccountName"))
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    }
}

/// The JSON pointer of the metadata that goes with the pod spec of `kind` (the Pod's own, or the
/// template's).
fn pod_metadata_pointer(kind: &str) -> String {
    let spec = pod_spec_pointer(kind).unwrap_or("/spec");
    match spec.strip_suffix("/spec") {
        Some(template) if !template.is_empty() => format!("{template}/metadata"),
        _ => "/metadata".to_owned(),
    }
}

/// The digests recorded in the [`VERIFIED_DIGESTS_ANNOTATION`] of the pod (template). An annotation
/// that does not parse records nothing: it can only ever cause a refusal, never an admission.
fn recorded_digests(kind: &str, object: &serde_json::Value) -> BTreeMap<String, String> {
    let pointer = format!(
        "{}/annotations/{}",
        pod_metadata_pointer(kind),
        VERIFIED_DIGESTS_ANNOTATION.replace('/', "~1")
    );
    object
        .pointer(&pointer)
        .and_then(|v| v.as_str())
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// JSON patch operations that set the annotation to `record`, creating the annotations map (or the
/// metadata) where the object has none.
fn annotation_patch(
    kind: &str,
    object: &serde_json::Value,
    record: &BTreeMap<String, String>,
) -> Vec<serde_json::Value> {
    let metadata = pod_metadata_pointer(kind);
    let value = serde_json::to_string(record).unwrap_or_default();
    let key = VERIFIED_DIGESTS_ANNOTATION.replace('/', "~1");
    match object.pointer(&metadata) {
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

/// The images an UPDATE must have checked.
///
/// A workload whose pod template changed (`spec.template`, a CronJob's
/// `spec.jobTemplate.spec.template`: a new env var, `kubectl rollout restart`'s annotation, a new
/// image) rolls out new pods: all of its images are checked, so that an image signed by no one that a
/// workload kept from before its policy is refused at `kubectl apply`, where the user looks, and not
/// only at the ReplicaSet's or Pod's CREATE that follows. The comparison includes the template's
/// metadata and the webhook's own `registryx.io/verified-digests` annotation: the mutating webhook
/// patches only images it checks, so on an UPDATE that leaves the template alone it checks and patches
/// nothing, and its patches can never make an unchanged template look changed (no loop with
/// `reinvocationPolicy: IfNeeded` or a GitOps controller that re-applies).
///
/// An UPDATE that leaves the template alone (scale, the workload's own labels and annotations,
/// finalizers removed by the garbage collector) and any UPDATE of a Pod, whose running containers only
/// an image field can change, starts nothing new: only image fields that are new or differ from the
/// old object's are checked (a new ephemeral container, `kubectl set image`). What runs was checked
/// when it was created, and an old workload whose image a policy now refuses can still be scaled down
/// or deleted. All images are checked when the old object is missing or unreadable.
fn changed_images(
    kind: &str,
    images: Vec<ContainerImage>,
    object: &serde_json::Value,
    request: &AdmissionRequest<DynamicObject>,
) -> Vec<ContainerImage> {
    let Some(old) = request
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
    else {
        return images;
    };
    if let Some(template) = pod_template_pointer(kind) {
        let new_template = object.pointer(template);
        if new_template.is_none() || old.pointer(template) != new_template {
            return images;
        }
    }
    match images_of(kind, &old) {
        Ok(old) => images.into_iter().filter(|i| !old.contains(i)).collect(),
        Err(_) => images,
    }
}

/// The metrics label of why a verdict refused: the typed reason of the first enforcing policy that
/// failed (never read out of the messages, where a repository named `team/rego-app` would pass for a
/// Rego refusal).
fn reason_label(verdict: &ImageVerdict) -> &'static str {
    verdict
        .policies
        .iter()
        .filter(|p| !p.passed && p.mode == Mode::Enforce)
        .find_map(|p| p.reason_kind)
        .map_or("refused", crate::verify::reason::Reason::label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{AuthorityEvidence, PolicyVerdict};

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

    fn update(
        kind: &str,
        old: serde_json::Value,
        new: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        serde_json::from_value(serde_json::json!({
            "uid": "u-1",
            "kind": {"group": "apps", "version": "v1", "kind": kind},
            "resource": {"group": "apps", "version": "v1", "resource": "workloads"},
            "name": "api",
            "namespace": "payments",
            "operation": "UPDATE",
            "userInfo": {"username": "ci"},
            "object": new,
            "oldObject": old,
        }))
        .unwrap()
    }

    fn checked(kind: &str, old: serde_json::Value, new: serde_json::Value) -> Vec<String> {
        let images = images_of(kind, &new).unwrap();
        changed_images(kind, images, &new, &update(kind, old, new.clone()))
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
        let patch: json_patch::Patch =
            serde_json::from_value(annotation_patch(kind, &stored, &record).into()).unwrap();
        json_patch::patch(&mut stored, &patch).unwrap();
        let mut scaled = stored.clone();
        scaled["spec"]["replicas"] = 5.into();
        assert!(checked(kind, stored, scaled).is_empty());
    }

    #[test]
    fn log_lines_stay_bounded_and_valid_json_whatever_a_pod_names() {
        let decision = |image: String| ImageDecision {
            container: "app".into(),
            image,
            admitted: false,
            refusal: Some("no signature".into()),
            warnings: Vec::new(),
            verdict: None,
            reason_label: "no_signature",
            pins: false,
        };
        let few: Vec<_> = (0..3)
            .map(|i| decision(format!("r.example/a:{i}")))
            .collect();
        let (text, omitted) = logged_decisions(&few);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((parsed.as_array().unwrap().len(), omitted), (3, 0));
        assert_eq!(parsed[1]["image"], "r.example/a:1");

        let many: Vec<_> = (0..64)
            .map(|i| decision(format!("r.example/{}:{i}", "é".repeat(200))))
            .collect();
        let (text, omitted) = logged_decisions(&many);
        assert!(text.len() <= MAX_LOGGED_DECISIONS_BYTES, "{}", text.len());
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let kept = parsed.as_array().unwrap().len();
        assert!(kept > 0 && omitted > 0, "kept {kept}, omitted {omitted}");
        assert_eq!(kept + omitted, 64);

        // One decision larger than the bound on its own is logged as its summary, not dropped.
        let mut huge = decision("r.example/huge:1".into());
        huge.refusal = Some("x".repeat(MAX_LOGGED_DECISIONS_BYTES * 2));
        let (text, omitted) = logged_decisions(&[huge, decision("r.example/small:1".into())]);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(omitted, 0, "{text}");
        assert_eq!(parsed[0]["image"], "r.example/huge:1");
        assert_eq!(parsed[0]["summarized"], true);
        assert_eq!(parsed[0]["reason"], "no_signature");
        assert_eq!(parsed[1]["image"], "r.example/small:1");
    }

    #[test]
    fn admitted_images_are_logged_by_who_vouched_refused_ones_whole() {
        let evidence = |authority: &str, verified| AuthorityEvidence {
            authority: authority.into(),
            digest: "sha256:aa".into(),
            verified,
            reason: (!verified).then(|| "signed with another key".into()),
            reason_kind: None,
            proof: None,
        };
        let policy = |name: &str, passed, authorities| PolicyVerdict {
            policy: name.into(),
            policy_uid: None,
            mode: Mode::Enforce,
            passed,
            authorities,
            reasons: if passed {
                Vec::new()
            } else {
                vec!["no signature by ci".into()]
            },
            remedy: None,
            reason_kind: None,
            rego_input: None,
            evidence_complete: true,
        };
        let decision = |admitted, warnings: Vec<String>, policies| ImageDecision {
            container: "containers[app]".into(),
            image: "r.example/app@sha256:aa".into(),
            admitted,
            refusal: (!admitted).then(|| "refused".into()),
            warnings,
            verdict: Some(Arc::new(ImageVerdict {
                image: "r.example/app@sha256:aa".into(),
                digest: Some("sha256:aa".into()),
                policies,
            })),
            reason_label: if admitted { "verified" } else { "no_signature" },
            pins: false,
        };
        let admitted = decision(
            true,
            Vec::new(),
            vec![
                policy(
                    "signed",
                    true,
                    vec![evidence("ci", false), evidence("release", true)],
                ),
                policy("rules-only", true, Vec::new()),
            ],
        );
        let (text, _) = logged_decisions(&[admitted]);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed[0],
            serde_json::json!({
                "container": "containers[app]",
                "image": "r.example/app@sha256:aa",
                "admitted": true,
                "digest": "sha256:aa",
                "verifiedBy": ["signed/release"],
                "passed": ["rules-only"],
            })
        );

        // A warning or a refusal is someone's to act on: logged with the whole verdict.
        let warned = decision(
            true,
            vec!["policy w warns".into()],
            vec![policy("w", false, vec![evidence("ci", false)])],
        );
        let refused = decision(
            false,
            Vec::new(),
            vec![policy("signed", false, vec![evidence("ci", false)])],
        );
        let (text, _) = logged_decisions(&[warned, refused]);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        for logged in parsed.as_array().unwrap() {
            assert_eq!(
                logged["verdict"]["policies"][0]["authorities"][0]["reason"],
                "signed with another key",
                "{logged}"
            );
        }
    }
}
