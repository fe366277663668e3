//! The decision log: one line per review that says what was decided about each image, bounded and
//! valid JSON whatever a pod names. Admitted images are logged by who vouched for them; refusals and
//! warnings, which someone has to act on, whole.

use serde::Serialize;

use super::decision::ImageDecision;

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
                        .filter(|a| a.verified())
                        .map(move |a| format!("{}/{}", p.policy, a.authority))
                })
                .collect(),
            passed: policies
                .iter()
                .filter(|p| p.passed() && !p.authorities.iter().any(|a| a.verified()))
                .map(|p| p.policy.as_str())
                .collect(),
        }
    }
}

/// The decisions as a JSON array for the log line, and how many were left out: whole decisions are
/// kept while they fit in `MAX_LOGGED_DECISIONS_BYTES`, so the array stays valid JSON that log
/// pipelines read as objects (the JSON log format writes it as one, see `telemetry`). An image admitted
/// without a warning is logged as its `AdmittedSummary`.
pub fn logged_decisions(decided: &[ImageDecision]) -> (String, usize) {
    let mut text = String::from("[");
    let mut kept = 0;
    for decision in decided {
        let full = if decision.admitted() && decision.warnings.is_empty() {
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
            let mut refusal = decision.refusal_text().unwrap_or_default().to_owned();
            refusal.truncate(refusal.floor_char_boundary(512));
            serde_json::json!({
                "container": decision.container,
                "image": decision.image,
                "admitted": decision.admitted(),
                "reason": decision.label(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::Mode;
    use crate::refusal::{Failure, Reason};
    use crate::verify::{
        AuthorityEvidence, ImageVerdict, Outcome, PolicyFailure, PolicyVerdict, Proof,
    };

    #[test]
    fn log_lines_stay_bounded_and_valid_json_whatever_a_pod_names() {
        let decision = |image: String| ImageDecision {
            container: "app".into(),
            image,
            refusal: Some(Failure::new(Reason::NoSignature, "no signature")),
            warnings: Vec::new(),
            verdict: None,
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
        huge.refusal = Some(Failure::new(
            Reason::NoSignature,
            "x".repeat(MAX_LOGGED_DECISIONS_BYTES * 2),
        ));
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
            outcome: if verified {
                Outcome::Verified(Proof {
                    format: "legacy",
                    signature_digest: "sha256:5a".into(),
                    key_id: None,
                    issuer: None,
                    subject: None,
                    rekor_integrated_time: None,
                })
            } else {
                Outcome::Refused(Failure::new(Reason::OtherSigner, "signed with another key"))
            },
            attestations: Vec::new(),
            unmet_attestation: None,
        };
        let policy = |name: &str, passed: bool, authorities| PolicyVerdict {
            policy: name.into(),
            policy_uid: None,
            mode: Mode::Enforce,
            authorities,
            failure: (!passed).then(|| PolicyFailure {
                reason: Reason::OtherSigner,
                messages: vec!["no signature by ci".into()],
                remedy: None,
            }),
            rego_input: None,
            evidence_complete: true,
        };
        let decision = |admitted: bool, warnings: Vec<String>, policies| ImageDecision {
            container: "containers[app]".into(),
            image: "r.example/app@sha256:aa".into(),
            refusal: (!admitted).then(|| Failure::new(Reason::OtherSigner, "refused")),
            warnings,
            verdict: Some(Arc::new(ImageVerdict {
                image: "r.example/app@sha256:aa".into(),
                digest: Some("sha256:aa".into()),
                policies,
            })),
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
