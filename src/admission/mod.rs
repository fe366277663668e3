//! Admission: one AdmissionReview of a Pod or a workload with a pod template, decided. The rooms, in
//! the order a review passes them:
//!
//! - [`workload`]: the object of its kind: its images, its pod as Rego sees it, the digests recorded at
//!   its admission, the images an UPDATE changes, the record's patch.
//! - [`namespaces`]: the namespace's labels, for policies' selectors.
//! - [`decision`]: each distinct image decided ([`ImageDecider`], which `verify` uses too): the
//!   governing policies, unmatched, not Ready, the registry's bulkhead, verification and Rego, pins.
//! - [`response`]: the decisions as an AdmissionResponse (refusals, warnings, audit annotations) or
//!   the mutating review's patch.
//! - [`decision_log`], [`metrics`], [`events`]: what is told of it.
//!
//! Business logic only: no HTTP here (see `server`), so that it is tested on typed requests.

pub mod decision;
pub mod decision_log;
pub mod events;
pub mod metrics;
pub mod namespaces;
pub mod response;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector::Store;

pub use decision::{ImageDecider, ImageDecision, Review, Scope, Unmatched};
pub use metrics::AdmissionMetrics;
pub use response::{MAX_REFUSAL_BYTES, MAX_RESPONSE_MESSAGE_BYTES};
pub use workload::{
    ContainerImage, VERIFIED_DIGESTS_ANNOTATION, Workload, pod_spec_pointer, pod_template_pointer,
};

use crate::decide::RequestContext;
use crate::policy::SharedSnapshot;
use crate::refusal::{About, Failure, Reason};
use crate::rego::{RegoRequest, RegoUserInfo};
use crate::verify::Verifier;

/// The default cap on distinct images in one object: real pods name a handful; a pod naming hundreds is
/// an attempt to make one review cost hundreds of registry round trips.
pub const MAX_IMAGES_PER_REVIEW: usize = 64;

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

/// The admission engine, shared by every request.
pub struct Admission {
    decider: ImageDecider,
    namespaces: namespaces::Namespaces,
    settings: AdmissionSettings,
    metrics: Option<AdmissionMetrics>,
    events: Option<events::RefusalEvents>,
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
            decider: ImageDecider::new(
                snapshot,
                verifier,
                settings.unmatched,
                settings.max_concurrent_verifications,
            ),
            namespaces: namespaces::Namespaces {
                store: namespaces,
                api: None,
            },
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
        self.namespaces.api = Some(kube::Api::all(client));
        self
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        self.decider.verifier()
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
                let message = format!("registryx-guard cannot read the object: {error}");
                return self.refuse(response, Failure::new(Reason::Malformed, message));
            }
        };
        let workload = Workload::new(request.kind.kind.as_str(), object);
        let kind = workload.kind();
        let images = match workload.images() {
            Ok(images) => images,
            Err(error) => {
                let message = format!("registryx-guard cannot check this {kind}: {error}");
                return self.refuse(response, Failure::new(Reason::Malformed, message));
            }
        };
        // An UPDATE is checked for what it starts: every image of a changed pod template (a new
        // rollout), and otherwise only the image fields that are new or differ from the old object's
        // (see `Workload::changed_images`).
        let images = match request.operation {
            Operation::Update => {
                let old = request
                    .old_object
                    .as_ref()
                    .and_then(|o| serde_json::to_value(o).ok());
                workload.changed_images(images, old.as_ref())
            }
            _ => images,
        };
        if images.is_empty() {
            return response;
        }
        let labels = match self
            .namespaces
            .labels(request.namespace.as_deref(), deadline)
            .await
        {
            Ok(labels) => labels,
            Err(reason) => {
                let message = format!("registryx-guard cannot decide: {reason}");
                return self.refuse(response, Failure::new(Reason::NamespaceUnknown, message));
            }
        };
        let context = request_context(
            request,
            &workload,
            labels.as_ref(),
            self.settings.environment.clone(),
        );
        let recorded = workload.recorded_digests();
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
            let message = format!(
                "this {kind} names {} distinct images; registryx-guard checks at most {} in one object",
                distinct.len(),
                self.settings.max_images_per_review
            );
            let failure = Failure::remedied(Reason::TooManyImages, message, &About::default());
            return self.refuse(response, failure);
        }
        let scope = Scope {
            labels: labels.as_ref(),
            context: &context,
            recorded: &recorded,
            review: if mutate {
                Review::Mutate
            } else {
                Review::Validate
            },
        };
        let decided: Vec<ImageDecision> = join_all(distinct.iter().map(|image| async {
            self.decider
                .decide(&image.container, &image.image, &scope, deadline)
                .await
                .bounded(MAX_REFUSAL_BYTES, response::MAX_WARNINGS)
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
            response::pin_digests(response, &workload, &images, &decisions, &recorded)
        } else {
            if let Some(events) = self.events.as_ref().filter(|_| !request.dry_run) {
                events.publish(request, &decided);
            }
            if let Some(metrics) = &self.metrics {
                metrics.record(&decisions);
            }
            response::verdict(response, &decisions)
        };
        if let Some(metrics) = &self.metrics {
            metrics.duration.observe(started.elapsed().as_secs_f64());
        }
        // Serializing the decisions is most of a cached review's logging cost: only when logged.
        if tracing::enabled!(tracing::Level::INFO) {
            let (logged, omitted) = decision_log::logged_decisions(&decided);
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

    /// The whole review refused, counted by its reason.
    fn refuse(&self, response: AdmissionResponse, failure: Failure) -> AdmissionResponse {
        if let Some(metrics) = &self.metrics {
            metrics.refused_review(failure.reason);
        }
        response::refuse(response, &failure)
    }
}

/// The workload as Rego sees it: the request, the namespace and the pod's metadata.
fn request_context(
    request: &AdmissionRequest<DynamicObject>,
    workload: &Workload,
    labels: Option<&BTreeMap<String, String>>,
    default_environment: Option<String>,
) -> RequestContext {
    let user = &request.user_info;
    RequestContext {
        namespace: request.namespace.clone(),
        namespace_labels: labels.cloned().unwrap_or_default(),
        default_environment,
        request: Some(RegoRequest {
            kind: workload.kind().to_owned(),
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
        pod: Some(workload.pod()),
        keep_rego_input: false,
    }
}
