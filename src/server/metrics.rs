//! The server's own metrics, read at scrape time: policies by readiness and the snapshot's revision
//! (one per reconcile of the controller or reload of `--policy-dir`), status writes, and what the push
//! events endpoint did.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;

use super::push::PushCounters;
use crate::admission::metrics::encode_counters;
use crate::policy::SharedSnapshot;

#[derive(Debug)]
pub struct ServerCollector {
    pub snapshot: SharedSnapshot,
    pub push: Arc<PushCounters>,
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot.load();
        let mut policies = encoder.encode_descriptor(
            "registryx_guard_policies",
            "ImageSigningPolicies in the published snapshot, by readiness",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (ready, count) in [
            ("true", snapshot.policies.len()),
            ("false", snapshot.not_ready.len()),
        ] {
            let labels = [("ready", ready)];
            ConstGauge::new(count as i64).encode(policies.encode_family(&labels)?)?;
        }
        encode_counters(
            &mut encoder,
            &[
                (
                    "registryx_guard_policy_reconciles",
                    "Policy snapshots published (controller reconciles, or --policy-dir reloads)",
                    snapshot.revision,
                ),
                (
                    "registryx_guard_policy_status_writes",
                    "Policy statuses written by this replica (the Lease holder)",
                    crate::controller::STATUS_WRITES.load(Relaxed),
                ),
                (
                    "registryx_guard_policy_status_write_failures",
                    "Policy status writes the API server refused",
                    crate::controller::STATUS_WRITE_FAILURES.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_received",
                    "Requests to /registryx/events",
                    self.push.received.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_refused",
                    "Push events refused (no or a wrong token, too large, too slow, malformed)",
                    self.push.refused.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_repositories_dropped",
                    "Repositories whose cached results push events dropped (after coalescing)",
                    self.push.repositories_dropped.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_overflows",
                    "Sweeps that dropped every cached result because too many repositories were pending",
                    self.push.overflows.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_shared",
                    "Batches of swept push events this replica wrote to the events ConfigMap for the others",
                    self.push.shared.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_from_peers",
                    "Batches of push events from other replicas that this replica applied",
                    self.push.from_peers.load(Relaxed),
                ),
                (
                    "registryx_guard_push_events_share_failures",
                    "Writes of the events ConfigMap that failed (the local sweep had happened)",
                    self.push.share_failures.load(Relaxed),
                ),
            ],
        )
    }
}
