//! Admission metrics in Prometheus' text format: decisions by outcome, policy and reason, the latency
//! histogram, and the verifier's cache and registry counters, read at scrape time.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::decision::ImageDecision;
use crate::refusal::Reason;
use crate::verify::Verifier;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// allow | deny | warn
    pub decision: String,
    /// The policy that decided, or "none".
    pub policy: String,
    /// `verified`, or the label of a [`Reason`]: a closed set ([`Reason::ALL`], README's table).
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    pub decisions: Family<DecisionLabels, Counter>,
    pub duration: Histogram,
}

impl AdmissionMetrics {
    /// Registers the metrics, and the verifier's counters, in `registry`.
    pub fn register(registry: &mut Registry, verifier: Arc<Verifier>) -> AdmissionMetrics {
        let metrics = AdmissionMetrics {
            decisions: Family::default(),
            // 100 µs to ~13 s: cached answers sit at the bottom, cold verifications at the top.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 18,
            )),
        };
        registry.register(
            "registryx_guard_admission_decisions",
            "Admission decisions by outcome, policy and reason",
            metrics.decisions.clone(),
        );
        registry.register(
            "registryx_guard_admission_duration_seconds",
            "Time to answer one AdmissionReview",
            metrics.duration.clone(),
        );
        registry.register_collector(Box::new(VerifierCollector(verifier)));
        metrics
    }

    fn count(&self, decision: &str, policy: &str, reason: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: decision.into(),
                policy: policy.into(),
                reason,
            })
            .inc();
    }

    /// A review refused as a whole, before any image was decided.
    pub fn refused_review(&self, reason: Reason) {
        self.count("deny", "none", reason.label());
    }

    /// One count per (image decision, governing policy), `none` for an image no policy governs.
    pub fn record(&self, decisions: &[ImageDecision]) {
        for decision in decisions {
            let outcome = match (decision.admitted(), decision.warnings.is_empty()) {
                (false, _) => "deny",
                (true, false) => "warn",
                (true, true) => "allow",
            };
            let label = decision.label();
            let policies = decision.verdict.iter().flat_map(|v| v.policies.iter());
            let mut counted = false;
            for policy in policies {
                self.count(outcome, &policy.policy, label);
                counted = true;
            }
            if !counted {
                self.count(outcome, "none", label);
            }
        }
    }
}

/// The verifier's own counters, read when scraped rather than mirrored on every request.
#[derive(Debug)]
struct VerifierCollector(Arc<Verifier>);

impl Collector for VerifierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (hits, misses) = self.0.cache_stats();
        // One counter, two results: a hit ratio is one query, `rate(..{result="hit"}) / rate(..)`.
        let mut lookups = encoder.encode_descriptor(
            "registryx_guard_verification_cache_lookups",
            "Verification results looked up in the cache, by result (hit: served from it, miss: computed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (result, value) in [("hit", hits), ("miss", misses)] {
            let labels = [("result", result)];
            ConstCounter::new(value).encode(lookups.encode_family(&labels)?)?;
        }
        let renewals = self.0.revalidation_stats();
        let mut revalidations = encoder.encode_descriptor(
            "registryx_guard_revalidations",
            "Verified results renewed in the background before they expire, by outcome (renewed: still \
             verified, revoked: now refused, failed: the registry failed, skipped: too many in flight)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (outcome, value) in [
            ("renewed", renewals.renewed),
            ("revoked", renewals.revoked),
            ("failed", renewals.failed),
            ("skipped", renewals.skipped),
        ] {
            let labels = [("outcome", outcome)];
            ConstCounter::new(value).encode(revalidations.encode_family(&labels)?)?;
        }
        let counters = [
            (
                "registryx_guard_registry_requests",
                "Requests sent to registries",
                self.0.registry_requests(),
            ),
            (
                "registryx_guard_registry_errors",
                "Signature reads that failed at the registry",
                self.0.registry_errors(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Counters read at scrape time from `(name, help, value)` triples.
pub fn encode_counters(
    encoder: &mut DescriptorEncoder,
    counters: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in counters {
        let counter = ConstCounter::new(*value);
        let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)?;
    }
    Ok(())
}
