//! Kubernetes Events for refusals: a Warning on the ImageSigningPolicy that refused, its reason the
//! typed one (`NoSignature`, `EmptyBlob`, `RegistryRefused`, ...), its note the workload, the image and
//! the refusal, so that `kubectl describe isp NAME` and event pipelines show who was refused and why.
//!
//! Best effort and bounded: events are written in the background, never on the review's path; past
//! [`MAX_IN_FLIGHT`] writes in flight the event is dropped and counted. kube's recorder folds the
//! refusals of one (policy, reason) within its series window into one event, whose note names the
//! first workload and whose count says how many followed: keyed by workload instead, a flood of pods
//! with fresh names would grow the recorder's cache without bound. Dry runs write none (the webhooks
//! declare `sideEffects: NoneOnDryRun`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;

use super::decision::ImageDecision;

/// Event writes in flight at once; a flood of refused pods beyond this costs the API server nothing.
pub const MAX_IN_FLIGHT: usize = 16;
/// The longest note in bytes (the API server's limit is 1 KiB).
const MAX_NOTE_BYTES: usize = 1000;

/// Writes refusal events.
#[derive(Clone)]
pub struct RefusalEvents {
    recorder: Recorder,
    in_flight: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
}

/// One refusal, as an event says it.
pub struct Refusal<'a> {
    /// The policy that refused, and its uid (for `kubectl describe`, which selects by uid).
    pub policy: &'a str,
    pub policy_uid: Option<&'a str>,
    /// The typed reason's label (`no_signature`).
    pub reason: &'a str,
    /// `Deployment payments/web`.
    pub workload: String,
    pub message: &'a str,
}

impl RefusalEvents {
    pub fn new(client: kube::Client, instance: &str) -> RefusalEvents {
        RefusalEvents {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "registryx-guard".into(),
                    instance: Some(instance.to_owned()),
                },
            ),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Events not written because [`MAX_IN_FLIGHT`] were being written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// One event per (refused image, enforcing policy that refused it), on the policy.
    pub fn publish(&self, request: &AdmissionRequest<DynamicObject>, decided: &[ImageDecision]) {
        let name = if request.name.is_empty() {
            "(name not yet generated)"
        } else {
            request.name.as_str()
        };
        let workload = match request.namespace.as_deref() {
            Some(namespace) => format!("{} {namespace}/{name}", request.kind.kind),
            None => format!("{} {name}", request.kind.kind),
        };
        for decision in decided {
            let (Some(verdict), Some(message)) = (&decision.verdict, decision.refusal_text())
            else {
                continue;
            };
            for policy in verdict.refusing() {
                let Some(reason) = policy.reason() else {
                    continue;
                };
                self.refused(Refusal {
                    policy: &policy.policy,
                    policy_uid: policy.policy_uid.as_deref(),
                    reason: reason.label(),
                    workload: workload.clone(),
                    message,
                });
            }
        }
    }

    /// Writes the event in the background (or drops it, see the module).
    pub fn refused(&self, refusal: Refusal<'_>) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let regarding = ObjectReference {
            api_version: Some("registryx.io/v1alpha1".into()),
            kind: Some("ImageSigningPolicy".into()),
            name: Some(refusal.policy.to_owned()),
            uid: refusal.policy_uid.map(str::to_owned),
            ..ObjectReference::default()
        };
        let mut note = format!("{}: {}", refusal.workload, refusal.message);
        note.truncate(note.floor_char_boundary(MAX_NOTE_BYTES));
        let event = Event {
            type_: EventType::Warning,
            reason: camel_case(refusal.reason),
            note: Some(note),
            action: "Admit".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = recorder.publish(&event, &regarding).await {
                tracing::debug!(%error, "cannot publish a refusal event");
            }
        });
    }
}

/// `no_signature` -> `NoSignature`, the form Kubernetes event reasons take.
pub fn camel_case(label: &str) -> String {
    label
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_read_as_event_reasons() {
        assert_eq!(super::camel_case("no_signature"), "NoSignature");
        assert_eq!(super::camel_case("rego"), "Rego");
        assert_eq!(super::camel_case("other_digest"), "OtherDigest");
    }
}
