//! Each policy's status: the Ready condition its compile result deserves, written by server-side apply
//! under our field manager when it differs from what the object says, and an event when readiness
//! flips. Only the Lease holder calls it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::Resource as _;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};

use super::violations::PolicyViolations;
use crate::policy::{ImageSigningPolicy, ImageSigningPolicyStatus};

/// The field manager of the status this controller writes.
const FIELD_MANAGER: &str = "registryx-guard";

/// Policy statuses written by this process (the Lease holder), for `/metrics`.
pub static STATUS_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Policy status writes the API server refused, for `/metrics`.
pub static STATUS_WRITE_FAILURES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The Ready condition a compile result deserves: Ready with the policy's Ready message (what it
/// does not check included), or not, with why.
fn ready_condition(result: &Result<String, String>) -> (String, String, String) {
    match result {
        Ok(message) => ("True".into(), "Compiled".into(), message.clone()),
        Err(message) => (
            "False".into(),
            "Invalid".into(),
            format!("{message}; the images it governs are refused until it is fixed"),
        ),
    }
}

/// Writes status when it differs from what the object says, and an event when readiness flips.
/// `violations`: what the audit's last completed pass found (`None`: no pass yet, none written).
pub(super) async fn write_status(
    api: &Api<ImageSigningPolicy>,
    recorder: &Recorder,
    policy: &ImageSigningPolicy,
    result: &Result<String, String>,
    violations: Option<PolicyViolations>,
) {
    let Some(name) = policy.metadata.name.as_deref() else {
        return;
    };
    let generation = policy.metadata.generation;
    let (status, reason, message) = ready_condition(result);
    let previous = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let observed = policy.status.as_ref().and_then(|s| s.observed_generation);
    let (count, offenders) = match violations {
        Some(v) => (Some(v.count), v.offenders),
        None => (None, Vec::new()),
    };
    let audited_as_written = policy
        .status
        .as_ref()
        .is_some_and(|s| s.violations == count && s.offenders == offenders);
    if observed == generation
        && audited_as_written
        && previous
            .is_some_and(|c| c.status == status && c.reason == reason && c.message == message)
    {
        return;
    }
    let flipped = previous.is_none_or(|c| c.status != status);
    let transition = match previous {
        Some(c) if !flipped => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: "Ready".into(),
        status: status.clone(),
        reason: reason.clone(),
        message: message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    // Server-side apply of the whole status under our field manager: the API server records who owns
    // it, and a forced apply takes over fields another manager (a kubectl edit) left behind.
    let patch = serde_json::json!({
        "apiVersion": ImageSigningPolicy::api_version(&()),
        "kind": ImageSigningPolicy::kind(&()),
        "status": ImageSigningPolicyStatus {
            observed_generation: generation,
            conditions: vec![condition],
            violations: count,
            offenders,
        },
    });
    if let Err(error) = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        STATUS_WRITE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(policy = name, %error, "cannot write policy status");
        return;
    }
    STATUS_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(policy = name, ready = %status, %message, "policy status written");
    if flipped {
        let event = Event {
            type_: if result.is_ok() {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: reason.clone(),
            note: Some(message.chars().take(1000).collect()),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(policy = name, %error, "cannot publish an event");
        }
    }
}
