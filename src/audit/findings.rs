//! A pass's results, per pod, container and policy (pass and fail), and what they add up to: each
//! policy's violations for its status, the violation counts for the metric, the offences for events.

use std::collections::{BTreeMap, BTreeSet};

use super::inventory::Subject;
use super::pass::{Key, PassState};
use crate::controller::{MAX_OFFENDERS, PolicyViolations};
use crate::policy::Offender;

/// One result: a container of a pod (or of a pod-less workload's template) against one policy. Its
/// fields are those of a `wgpolicyk8s.io` PolicyReport result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditResult {
    pub namespace: Option<String>,
    /// `Pod`, or the workload's kind for a template.
    pub kind: &'static str,
    /// The pod's (or workload's) name.
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub image: String,
    /// The policy, or `none` for a refusal no policy made (no policy governs the image, ...).
    pub policy: String,
    /// The authority that verified it, or the refusal reason's label.
    pub rule: String,
    pub passed: bool,
    /// The refusal's reason and remedy (empty when it passed).
    pub message: String,
    /// The refusal reason's label (`None` when it passed).
    pub reason: Option<&'static str>,
}

/// Everything a completed pass found.
#[derive(Debug, Default)]
pub struct Findings {
    pub results: Vec<AuditResult>,
    /// By policy name: subjects it refuses now (what its status shows).
    pub by_policy: BTreeMap<String, PolicyViolations>,
    /// `(policy, namespace, reason)` -> failing containers (the `audit_violations` gauge).
    pub counts: BTreeMap<(String, String, &'static str), u64>,
    /// Pods checked.
    pub pods: u64,
}

impl Findings {
    /// Joins each subject's images with what the pass found about them.
    pub fn gather(subjects: &[Subject], state: &PassState) -> Findings {
        let mut findings = Findings::default();
        // The subjects each policy refuses, by (namespace, name, kind) for a stable order of offenders.
        let mut offended: BTreeMap<String, BTreeMap<(String, String, &str), Offender>> =
            BTreeMap::new();
        for subject in subjects {
            if subject.kind == "Pod" {
                findings.pods += 1;
            }
            for (container, image) in &subject.images {
                let key = Key {
                    namespace: subject.namespace.clone(),
                    image: image.clone(),
                };
                let Some(rows) = state.rows(&key) else {
                    continue;
                };
                for row in rows.iter() {
                    findings.results.push(AuditResult {
                        namespace: Some(subject.namespace.clone()),
                        kind: subject.kind,
                        pod: subject.name.clone(),
                        pod_uid: subject.uid.clone(),
                        container: container.clone(),
                        image: image.clone(),
                        policy: row.policy.clone(),
                        rule: row.rule.clone(),
                        passed: row.passed(),
                        message: row.message.clone(),
                        reason: row.reason,
                    });
                    let Some(reason) = row.reason else {
                        continue;
                    };
                    *findings
                        .counts
                        .entry((row.policy.clone(), subject.namespace.clone(), reason))
                        .or_default() += 1;
                    offended
                        .entry(row.policy.clone())
                        .or_default()
                        .entry((
                            subject.namespace.clone(),
                            subject.name.clone(),
                            subject.kind,
                        ))
                        .or_insert_with(|| Offender {
                            pod: subject.display(),
                            container: container.clone(),
                            image: image.clone(),
                            reason: reason.to_owned(),
                        });
                }
            }
        }
        findings.by_policy = offended
            .into_iter()
            .map(|(policy, subjects)| {
                let violations = PolicyViolations {
                    count: u32::try_from(subjects.len()).unwrap_or(u32::MAX),
                    offenders: subjects.into_values().take(MAX_OFFENDERS).collect(),
                };
                (policy, violations)
            })
            .collect();
        findings
    }

    /// The failing results, one per (subject, container, image, reason): what events are about.
    pub fn offences(&self) -> impl Iterator<Item = &AuditResult> {
        let mut seen = BTreeSet::new();
        self.results.iter().filter(move |r| {
            !r.passed && seen.insert((&r.pod_uid, &r.container, &r.image, r.reason))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::audit::budget::Budget;
    use crate::audit::pass::{Checked, ImageCheck, Row};

    /// `bad` images fail policy p with no_signature; others pass.
    struct Fixed;

    impl ImageCheck for Fixed {
        fn fingerprint(&self, _key: &Key) -> u64 {
            0
        }
        async fn check(&self, key: &Key) -> Checked {
            let failed = key.image.contains("bad");
            Checked {
                rows: vec![Row {
                    policy: "p".into(),
                    rule: if failed { "no_signature" } else { "release" }.into(),
                    reason: failed.then_some("no_signature"),
                    message: if failed {
                        "unsigned".into()
                    } else {
                        String::new()
                    },
                }],
                requests: 0,
            }
        }
    }

    fn pod(name: &str, images: &[&str]) -> Subject {
        Subject {
            kind: "Pod",
            namespace: "team".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            images: images
                .iter()
                .enumerate()
                .map(|(i, image)| (format!("containers[c{i}]"), (*image).to_owned()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn pass_and_fail_rows_add_up_to_violations_and_at_most_five_offenders() {
        let mut subjects: Vec<Subject> = (0..7)
            .map(|i| pod(&format!("web-{i}"), &["r/good:1", "r/bad:1"]))
            .collect();
        subjects.push(pod("fine", &["r/good:1"]));
        let keys: BTreeSet<Key> = subjects
            .iter()
            .flat_map(|s| s.images.iter())
            .map(|(_, image)| Key {
                namespace: "team".into(),
                image: image.clone(),
            })
            .collect();
        let mut state = PassState::default();
        state
            .run(&keys, &Fixed, &mut Budget::new(100.0), Vec::new)
            .await;
        let findings = Findings::gather(&subjects, &state);
        assert_eq!(findings.pods, 8);
        assert_eq!(findings.results.len(), 15);
        assert_eq!(findings.results.iter().filter(|r| r.passed).count(), 8);
        let p = &findings.by_policy["p"];
        assert_eq!(p.count, 7);
        assert_eq!(p.offenders.len(), MAX_OFFENDERS);
        assert_eq!(p.offenders[0].pod, "team/web-0");
        assert_eq!(p.offenders[0].image, "r/bad:1");
        assert_eq!(p.offenders[0].reason, "no_signature");
        assert_eq!(
            findings.counts[&("p".to_owned(), "team".to_owned(), "no_signature")],
            7
        );
        assert_eq!(findings.offences().count(), 7);
    }
}
