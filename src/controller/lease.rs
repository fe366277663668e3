//! A `coordination.k8s.io/v1` Lease as a leader lock, so that of several replicas only one writes policy
//! status and events. kube has no leader-election helper, and this needs little: acquire when the lease
//! is free or expired, renew while held, with the API server's optimistic concurrency (resourceVersion)
//! deciding any race.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
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
        let holder = spec.holder_identity.as_deref();
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .or(spec.acquire_time.as_ref().map(|t| t.0));
        let duration =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
        let expired = renewed.is_none_or(|renewed| renewed + duration < now);
        let (acquired, transitions) = match holder {
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
