//! The audit's metrics (names fixed: the chart's alert rules are written against them).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::findings::Findings;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// The policy, or `none` for a refusal no policy made.
    pub policy: String,
    pub namespace: String,
    /// A refusal reason's label: a closed set (README's table).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `completed` | `failed`
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct AuditMetrics {
    pub violations: Family<ViolationLabels, Gauge>,
    pub pass_duration: Histogram,
    pub passes: Family<OutcomeLabels, Counter>,
    pub last_completed: Gauge<f64, AtomicU64>,
    pub registry_requests: Counter,
    pub pods: Gauge,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> AuditMetrics {
        let metrics = AuditMetrics {
            violations: Family::default(),
            // 10 ms to ~20 min: a warm pass of thousands of pods sits at the bottom, a cold one under a
            // small budget at the top.
            pass_duration: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            passes: Family::default(),
            last_completed: Gauge::default(),
            registry_requests: Counter::default(),
            pods: Gauge::default(),
        };
        let prefix = "registryx_guard_audit";
        registry.register(
            format!("{prefix}_violations"),
            "Running pods' containers that the policies refuse now, by policy, namespace and reason (last completed pass)",
            metrics.violations.clone(),
        );
        registry.register(
            format!("{prefix}_pass_duration_seconds"),
            "Time of one audit pass",
            metrics.pass_duration.clone(),
        );
        // prometheus-client adds `_total` to counters.
        registry.register(
            format!("{prefix}_passes"),
            "Audit passes by outcome (completed | failed)",
            metrics.passes.clone(),
        );
        registry.register(
            format!("{prefix}_last_pass_completed_timestamp_seconds"),
            "Unix time of this replica's last completed audit pass (0: none; only the Lease holder audits)",
            metrics.last_completed.clone(),
        );
        registry.register(
            format!("{prefix}_registry_requests"),
            "Registry requests made by audit passes",
            metrics.registry_requests.clone(),
        );
        registry.register(
            format!("{prefix}_pods"),
            "Pods checked in the last completed audit pass",
            metrics.pods.clone(),
        );
        metrics
    }

    /// This replica no longer holds the Lease: its findings are no longer current, and the new holder
    /// reports its own. Cleared so that a sum over replicas counts each violation once.
    pub fn stepped_down(&self) {
        self.violations.clear();
        self.pods.set(0);
    }

    /// A completed pass: the gauges replaced by its findings.
    pub fn completed(&self, findings: &Findings, seconds: f64) {
        self.violations.clear();
        for ((policy, namespace, reason), count) in &findings.counts {
            self.violations
                .get_or_create(&ViolationLabels {
                    policy: policy.clone(),
                    namespace: namespace.clone(),
                    reason,
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.pods
            .set(i64::try_from(findings.pods).unwrap_or(i64::MAX));
        self.pass_duration.observe(seconds);
        self.passes
            .get_or_create(&OutcomeLabels {
                outcome: "completed",
            })
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_completed.set(now.as_secs_f64());
    }

    pub fn failed(&self) {
        self.passes
            .get_or_create(&OutcomeLabels { outcome: "failed" })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn a_replica_that_loses_the_lease_stops_reporting_violations() {
        let mut registry = Registry::default();
        let metrics = AuditMetrics::register(&mut registry);
        let findings = Findings {
            results: Vec::new(),
            by_policy: Default::default(),
            counts: [(("p".to_owned(), "shop".to_owned(), "no_signature"), 3)].into(),
            pods: 4,
        };
        metrics.completed(&findings, 0.5);
        let text = encoded(&registry);
        assert!(
            text.contains(
                "registryx_guard_audit_violations{policy=\"p\",namespace=\"shop\",reason=\"no_signature\"} 3"
            ),
            "{text}"
        );
        metrics.stepped_down();
        let text = encoded(&registry);
        assert!(
            !text.contains("registryx_guard_audit_violations{"),
            "{text}"
        );
        assert!(text.contains("registryx_guard_audit_pods 0"), "{text}");
    }
}
