//! The human-readable verdict of `registryx-guard verify`.

use std::fmt::Write as _;

use super::ImageVerdict;
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
        let state = match (policy.passed, policy.mode) {
            (true, _) => "passed",
            (false, Mode::Warn) => "FAILED (warn mode: admitted with a warning)",
            (false, Mode::Enforce) => "FAILED",
        };
        let _ = writeln!(out, "  policy {}: {state}", policy.policy);
        for evidence in &policy.authorities {
            if evidence.verified {
                let proof = evidence.proof.as_ref();
                let mut who = Vec::new();
                if let Some(key) = proof.and_then(|p| p.key_id.as_deref()) {
                    who.push(format!("key {key}"));
                }
                if let Some(subject) = proof.and_then(|p| p.subject.as_deref()) {
                    who.push(format!("subject {subject}"));
                }
                if let Some(issuer) = proof.and_then(|p| p.issuer.as_deref()) {
                    who.push(format!("issuer {issuer}"));
                }
                if let Some(time) = proof.and_then(|p| p.rekor_integrated_time) {
                    who.push(format!("logged at {time}"));
                }
                let format = proof.map(|p| p.format).unwrap_or("?");
                let _ = writeln!(
                    out,
                    "    authority {}: verified {} ({format} signature; {})",
                    evidence.authority,
                    evidence.digest,
                    who.join(", ")
                );
            } else {
                let _ = writeln!(
                    out,
                    "    authority {}: not verified: {}",
                    evidence.authority,
                    evidence.reason.as_deref().unwrap_or("no reason")
                );
            }
        }
        if !policy.passed {
            for reason in policy
                .reasons
                .iter()
                .filter(|r| !r.starts_with("authority "))
            {
                let _ = writeln!(out, "    {reason}");
            }
            if let Some(remedy) = &policy.remedy {
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
