//! A `coordination.k8s.io/v1` Lease as a leader lock, so that of several replicas only one writes policy
//! status and events: acquire when the lease is free or expired, renew while held, release on shutdown,
//! with the API server's optimistic concurrency (resourceVersion) deciding any race.
//!
//! Our own because the one leader-lease crate for kube 5 (kube-lease-manager) judges expiry by the
//! holder's renewTime against the local clock, and the others (kube-leader-election, kubert's `lease`)
//! need older kube releases. Expiry here is judged as client-go does: a record is expired when it has
//! not changed for its leaseDurationSeconds as measured by our own monotonic clock since we first saw
//! it, so a skewed clock on either side neither steals a live lease nor keeps a dead one.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The record last read (its resourceVersion) and when this process first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes the lease if it is free or expired, renews it if held: true while this replica leads.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        );
        let expired = self.unchanged_for(current.metadata.resource_version.as_deref()) >= duration;
        let (acquired, transitions) = match spec.holder_identity.as_deref() {
            Some(holder) if holder == self.identity => (
                spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now),
                spec.lease_transitions.unwrap_or(0),
            ),
            // Released (no holder) or not renewed in time: free to take.
            None => (now, spec.lease_transitions.unwrap_or(0) + 1),
            _ if expired => (now, spec.lease_transitions.unwrap_or(0) + 1),
            _ => return Ok(false),
        };
        let mut updated = current;
        updated.spec = Some(self.spec(acquired, now, transitions));
        // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409, not a
        // second leader.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// How long the record at `version` has gone unchanged, by this process's monotonic clock: zero
    /// when it is new to us.
    fn unchanged_for(&self, version: Option<&str>) -> Duration {
        let version = version.unwrap_or_default();
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.as_ref() {
            Some((seen, since)) if seen == version => since.elapsed(),
            _ => {
                *observed = Some((version.to_owned(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Gives the lease up (on shutdown), so that another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await?
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await?;
        }
        Ok(())
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}
