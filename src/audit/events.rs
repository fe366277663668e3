//! A Warning Event on each offending Pod (or pod-less workload): reason `WouldBeRefused`, the note the
//! container, the image, the reason's label and the refusal with its remedy. Written once per
//! (object, container, image, reason) while the offence lasts: an offence that clears and comes back is
//! told again. At most [`MAX_EVENTS_PER_PASS`] per pass; the rest are written by the passes after, so a
//! cluster-wide key rotation does not flood the API server.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::findings::{AuditResult, Findings};

pub const MAX_EVENTS_PER_PASS: usize = 100;
/// The API server's limit on a note is 1 KiB.
const MAX_NOTE_BYTES: usize = 1000;
pub const REASON: &str = "WouldBeRefused";

type Offence = (String, String, String, &'static str);

pub struct PodEvents {
    recorder: Recorder,
    /// The offences told, pruned to those that still hold after each pass (bounded by what runs).
    told: HashSet<Offence>,
}

fn offence(result: &AuditResult) -> Offence {
    (
        result.pod_uid.clone(),
        result.container.clone(),
        result.image.clone(),
        result.reason.unwrap_or_default(),
    )
}

impl PodEvents {
    pub fn new(client: kube::Client, instance: &str) -> PodEvents {
        PodEvents {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "registryx-guard-audit".into(),
                    instance: Some(instance.to_owned()),
                },
            ),
            told: HashSet::new(),
        }
    }

    /// Writes the events of a completed pass's new offences; returns how many were written.
    pub async fn publish(&mut self, findings: &Findings) -> usize {
        let current: HashSet<Offence> = findings.offences().map(offence).collect();
        self.told.retain(|o| current.contains(o));
        let mut written = 0;
        for result in findings.offences() {
            if written == MAX_EVENTS_PER_PASS {
                break;
            }
            let key = offence(result);
            if self.told.contains(&key) {
                continue;
            }
            let mut note = format!(
                "{} {} would be refused ({}, policy {}): {}",
                result.container,
                result.image,
                result.reason.unwrap_or_default(),
                result.policy,
                result.message
            );
            note.truncate(note.floor_char_boundary(MAX_NOTE_BYTES));
            let event = Event {
                type_: EventType::Warning,
                reason: REASON.into(),
                note: Some(note),
                action: "Audit".into(),
                secondary: None,
            };
            let (api_version, kind) = match result.kind {
                "Pod" => ("v1", "Pod"),
                "Job" | "CronJob" => ("batch/v1", result.kind),
                kind => ("apps/v1", kind),
            };
            let regarding = ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
                name: Some(result.pod.clone()),
                namespace: result.namespace.clone(),
                uid: Some(result.pod_uid.clone()),
                ..ObjectReference::default()
            };
            // Counted as told even when the write fails: a failing API server is not retried every
            // pass for every pod; the offence is told again once it clears and comes back.
            if let Err(error) = self.recorder.publish(&event, &regarding).await {
                tracing::debug!(%error, pod = %result.pod, "cannot publish an audit event");
            }
            self.told.insert(key);
            written += 1;
        }
        written
    }
}
