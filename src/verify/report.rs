//! The human-readable verdict of `registryx-guard verify`.

use std::fmt::Write as _;

use super::{ImageVerdict, Outcome};
use crate::policy::Mode;

/// Renders a verdict for a terminal: per policy, per authority, what was checked and what failed.
pub fn render_text(verdict: &ImageVerdict) -> String {
    let mut out = String::new();
    let digest = verdict.digest.as_deref().unwrap_or("digest unknown");
    let _ = writeln!(out, "image {} ({digest})", verdict.image);
    if verdict.policies.is_empty() {
        let _ = writeln!(
            out,
            "  no policy governs this image: admitted without looking it up"
        );
    }
    for policy in &verdict.policies {
        let state = match (policy.passed(), policy.mode) {
            (true, _) => "passed",
            (false, Mode::Warn) => "FAILED (warn mode: admitted with a warning)",
            (false, Mode::Enforce) => "FAILED",
            (false, Mode::Audit) => "FAILED (audit mode: admitted, reported by the audit)",
        };
        let _ = writeln!(out, "  policy {}: {state}", policy.policy);
        for evidence in &policy.authorities {
            match &evidence.outcome {
                Outcome::Verified(proof) => {
                    let mut who = Vec::new();
                    if let Some(key) = proof.key_id.as_deref() {
                        who.push(format!("key {key}"));
                    }
                    if let Some(subject) = proof.subject.as_deref() {
                        who.push(format!("subject {subject}"));
                    }
                    if let Some(issuer) = proof.issuer.as_deref() {
                        who.push(format!("issuer {issuer}"));
                    }
                    if let Some(time) = proof.rekor_integrated_time {
                        who.push(format!("logged at {time}"));
                    }
                    let _ = writeln!(
                        out,
                        "    authority {}: verified {} ({} signature; {})",
                        evidence.authority,
                        evidence.digest,
                        proof.format,
                        who.join(", ")
                    );
                }
                Outcome::Refused(failure) => {
                    let _ = writeln!(
                        out,
                        "    authority {}: not verified: {}",
                        evidence.authority, failure.message
                    );
                }
            }
        }
        if let Some(failure) = &policy.failure {
            for reason in failure
                .messages
                .iter()
                .filter(|r| !r.starts_with("authority "))
            {
                let _ = writeln!(out, "    {reason}");
            }
            if let Some(remedy) = &failure.remedy {
                let _ = writeln!(out, "    {remedy}");
            }
        }
    }
    let _ = writeln!(
        out,
        "result: {}",
        if verdict.admitted() {
            "admitted"
        } else {
            "refused"
        }
    );
    out
}
