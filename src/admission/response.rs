//! Decisions into an AdmissionResponse: the validating review's verdict (refusals within their bounds,
//! warnings, the audit annotations that name what was verified and why what was refused was refused)
//! and the mutating review's JSON patch (digests pinned, digests recorded).

use std::collections::{BTreeMap, HashMap};

use kube::core::admission::AdmissionResponse;

use super::decision::ImageDecision;
use super::workload::{ContainerImage, Workload};
use crate::refusal::Failure;

/// The most one image's refusal (or one warning) may take, in bytes. Registry text is bounded where it is
/// read (`crate::untrusted`); this is the last bound, whatever a future path forgets: a refusal is cached,
/// logged, written into an Event and shown by kubectl, and a few KiB say everything a user can act on.
pub const MAX_REFUSAL_BYTES: usize = 4 << 10;

/// The most the message of one AdmissionResponse may take: [`super::MAX_IMAGES_PER_REVIEW`] refusals of
/// [`MAX_REFUSAL_BYTES`] would be 256 KiB in one kubectl error; past this, the rest are counted.
pub const MAX_RESPONSE_MESSAGE_BYTES: usize = 32 << 10;

/// Warnings the API server passes on: it drops warnings past 4,096 characters in all, so more from
/// here would only cost memory.
pub const MAX_WARNINGS: usize = 16;

/// The audit annotation that names, for a refused review, the reason of each refusal
/// (`no_signature,not_ready`): what an auditor (and a test) reads as a type, not from the message.
pub const REFUSAL_REASONS_ANNOTATION: &str = "refusal-reasons";

/// The audit annotation that names what was verified: image, digest and authorities.
pub const VERIFIED_IMAGES_ANNOTATION: &str = "verified-images";

/// The audit annotation that names the `mode: audit` policies an admitted image fails
/// (`policy:reason,...`): the dry run refuses nothing and warns nothing, and leaves this trace in the
/// API server's audit log; the background audit reports them.
pub const AUDIT_MODE_FAILURES_ANNOTATION: &str = "audit-mode-failures";

/// The whole review refused for one `failure` (an object that cannot be read, too many images, a
/// namespace whose labels are unknown).
pub fn refuse(response: AdmissionResponse, failure: &Failure) -> AdmissionResponse {
    let mut response = response.deny(&failure.message);
    response.audit_annotations = HashMap::from([(
        REFUSAL_REASONS_ANNOTATION.to_owned(),
        failure.reason.label().to_owned(),
    )]);
    response
}

/// The validating review's answer: refused when any image is, with each distinct refusal once;
/// warnings passed on; what verified named in an audit annotation.
pub fn verdict(mut response: AdmissionResponse, decisions: &[ImageDecision]) -> AdmissionResponse {
    let mut verified = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for decision in decisions {
        if seen.contains(&decision.image.as_str()) {
            continue;
        }
        seen.push(&decision.image);
        let Some(verdict) = decision.verdict.as_ref().filter(|_| decision.admitted()) else {
            continue;
        };
        let authorities: Vec<&str> = verdict
            .policies
            .iter()
            .flat_map(|p| {
                p.authorities
                    .iter()
                    .filter(|e| e.verified())
                    .map(|e| e.authority.as_str())
            })
            .collect();
        verified.push(serde_json::json!({"image": decision.image, "digest": verdict.digest, "authorities": authorities}));
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
        response.audit_annotations.insert(
            VERIFIED_IMAGES_ANNOTATION.to_owned(),
            serde_json::Value::from(verified).to_string(),
        );
    }
    let mut dry_run: Vec<String> = Vec::new();
    let failing = decisions
        .iter()
        .flat_map(|d| d.verdict.iter().flat_map(|v| v.policies.iter()))
        .filter(|p| p.mode == crate::policy::Mode::Audit);
    for policy in failing {
        if let Some(reason) = policy.reason() {
            let entry = format!("{}:{}", policy.policy, reason.label());
            if !dry_run.contains(&entry) {
                dry_run.push(entry);
            }
        }
    }
    if !dry_run.is_empty() {
        response
            .audit_annotations
            .insert(AUDIT_MODE_FAILURES_ANNOTATION.to_owned(), dry_run.join(","));
    }
    let mut refusals: Vec<&str> = Vec::new();
    let mut reasons: Vec<&str> = Vec::new();
    for decision in decisions {
        let (Some(refusal), Some(reason)) = (decision.refusal_text(), decision.reason()) else {
            continue;
        };
        if !refusals.contains(&refusal) {
            refusals.push(refusal);
        }
        if !reasons.contains(&reason.label()) {
            reasons.push(reason.label());
        }
    }
    if refusals.is_empty() {
        return response;
    }
    response
        .audit_annotations
        .insert(REFUSAL_REASONS_ANNOTATION.to_owned(), reasons.join(","));
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

/// The mutating review's patch: each verified tag of a pinning policy becomes `image:tag@digest`;
/// each verified tag whose policies do not pin is recorded in the workload's
/// [`super::VERIFIED_DIGESTS_ANNOTATION`], unless an earlier admission recorded it.
pub fn pin_digests(
    response: AdmissionResponse,
    workload: &Workload,
    images: &[ContainerImage],
    decisions: &[ImageDecision],
    recorded: &BTreeMap<String, String>,
) -> AdmissionResponse {
    let mut operations = Vec::new();
    let mut record = recorded.clone();
    for (container, decision) in images.iter().zip(decisions) {
        let Some(verdict) = decision.verdict.as_ref().filter(|_| decision.admitted()) else {
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
            operations.push(
                serde_json::json!({"op": "replace", "path": container.pointer, "value": pinned}),
            );
        } else {
            record
                .entry(container.image.clone())
                .or_insert_with(|| digest.to_owned());
        }
    }
    if record != *recorded {
        operations.extend(workload.record_patch(&record));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::core::admission::AdmissionResponse;

    use super::*;
    use crate::policy::Mode;
    use crate::verify::{ImageVerdict, PolicyVerdict};

    #[test]
    fn a_failing_audit_policy_admits_without_a_warning_and_leaves_an_audit_annotation() {
        let failed = ImageVerdict {
            image: "r/a:1".into(),
            digest: Some("sha256:00".into()),
            policies: vec![PolicyVerdict::failing("dry-run", Mode::Audit)],
        };
        let decision = ImageDecision {
            container: "containers[app]".into(),
            image: "r/a:1".into(),
            refusal: None,
            warnings: Vec::new(),
            verdict: Some(Arc::new(failed)),
            pins: false,
        };
        // Any response serves: the annotations and warnings are what is asked.
        let response = verdict(AdmissionResponse::invalid("placeholder"), &[decision]);
        assert!(response.warnings.is_none());
        assert_eq!(
            response.audit_annotations[AUDIT_MODE_FAILURES_ANNOTATION],
            "dry-run:no_signature"
        );
        assert!(
            !response
                .audit_annotations
                .contains_key(REFUSAL_REASONS_ANNOTATION)
        );
    }
}
