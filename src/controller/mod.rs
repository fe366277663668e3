//! The policy controller: watches ImageSigningPolicies and the Secrets and ConfigMaps they refer to,
//! compiles them into the snapshot the webhook reads, and tells users in each policy's status whether it
//! is usable.
//!
//! Every replica watches and compiles (each needs the snapshot to answer admission); only the holder of
//! a Lease writes status and events, so replicas never fight over them. Any change rebuilds the whole
//! snapshot: policies are few and compiling them takes microseconds, which keeps the design free of
//! per-object bookkeeping, and a change reaches admission as soon as the watch delivers it.

mod lease;
mod sources;
mod status;
mod violations;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

pub use lease::LeaseLock;
pub use sources::ClusterSources;
use status::write_status;
pub use status::{STATUS_WRITE_FAILURES, STATUS_WRITES};
pub use violations::{AuditLink, MAX_OFFENDERS, PolicyViolations};

use crate::policy::{ImageSigningPolicy, Publisher, SharedSnapshot};

/// Who this replica is and where it keeps its lease.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// The namespace registryx-guard runs in: its Lease, and the only place it reads Secrets and
    /// ConfigMaps from (least privilege).
    pub namespace: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// The ConfigMap the replicas share push events through (`serve --events-configmap`): written up
    /// to five times a second per replica under a flood and read by no policy, so the controller's
    /// watch leaves it out rather than rebuild the snapshot and renew the Lease on every write.
    pub events_config_map: Option<String>,
    /// Shared with the background audit: this replica's leadership, and the violations it found.
    pub audit: AuditLink,
}

impl ControllerSettings {
    pub fn new(namespace: &str, identity: &str) -> ControllerSettings {
        ControllerSettings {
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_name: "registryx-guard-status-writer".to_owned(),
            lease_duration: Duration::from_secs(15),
            events_config_map: None,
            audit: AuditLink::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("a watch ended before its first sync; is the ImageSigningPolicy CRD installed?")]
    WatchEnded,
}

/// Runs until the task is dropped. `synced` is called once, after the first full sync has been
/// compiled and published: the moment this replica may report ready.
pub async fn run(
    client: Client,
    snapshot: SharedSnapshot,
    settings: ControllerSettings,
    synced: impl FnOnce() + Send,
) -> Result<(), ControllerError> {
    run_until(client, snapshot, settings, synced, std::future::pending()).await
}

/// [`run`] until `shutdown` completes, then gives up the status-writer Lease if this replica holds
/// it, so that another replica writes status at once rather than after the lease expires.
pub async fn run_until(
    client: Client,
    snapshot: SharedSnapshot,
    settings: ControllerSettings,
    synced: impl FnOnce() + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let changed = Arc::new(Notify::new());
    let everything = watcher::Config::default;
    let policies: Store<ImageSigningPolicy> =
        watch(Api::all(client.clone()), everything(), changed.clone());
    let secrets: Store<Secret> = watch(
        Api::namespaced(client.clone(), &settings.namespace),
        everything(),
        changed.clone(),
    );
    let config_maps: Store<ConfigMap> = watch(
        Api::namespaced(client.clone(), &settings.namespace),
        match &settings.events_config_map {
            Some(events) => everything().fields(&format!("metadata.name!={events}")),
            None => everything(),
        },
        changed.clone(),
    );
    for ready in [
        policies.wait_until_ready().await,
        secrets.wait_until_ready().await,
        config_maps.wait_until_ready().await,
    ] {
        ready.map_err(|_| ControllerError::WatchEnded)?;
    }

    let sources = ClusterSources::new(&settings.namespace, secrets, config_maps);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "registryx-guard".into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let lease = LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &settings.namespace),
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );
    let api: Api<ImageSigningPolicy> = Api::all(client);
    let mut synced = Some(synced);
    let mut publisher = Publisher::new(snapshot);
    let mut results = BTreeMap::new();
    // Recompiled on a watched change only: a wake to renew the lease or to write the audit's findings
    // publishes no new snapshot (the audit takes a new revision for a change of policies).
    let mut recompile = true;
    loop {
        let current: Vec<ImageSigningPolicy> =
            policies.state().iter().map(|p| (**p).clone()).collect();
        if recompile {
            results = publisher.publish(&current, &sources, &settings.namespace);
        }
        if let Some(synced) = synced.take() {
            synced();
        }

        let leading = match lease.try_acquire_or_renew().await {
            Ok(leading) => leading,
            Err(error) => {
                tracing::warn!(%error, "cannot renew the status-writer lease; not writing status");
                false
            }
        };
        settings.audit.set_leading(leading);
        if leading {
            for policy in &current {
                let Some(name) = policy.metadata.name.as_ref() else {
                    continue;
                };
                if let Some(result) = results.get(name) {
                    let violations = settings.audit.of(name);
                    write_status(&api, &recorder, policy, result, violations).await;
                }
            }
        }
        // Wake on any change, and at least every third of the lease to keep it renewed.
        let renew = settings.lease_duration / 3;
        recompile = false;
        tokio::select! {
            _ = changed.notified() => recompile = true,
            () = settings.audit.published() => {},
            _ = tokio::time::sleep(renew) => {},
            () = &mut shutdown => break,
        }
    }
    settings.audit.set_leading(false);
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "cannot release the status-writer lease; another replica takes it when it expires");
    }
    Ok(())
}

/// A live cache of namespaces and their labels, for policies' namespaceSelectors.
pub fn namespace_store(client: Client) -> Store<k8s_openapi::api::core::v1::Namespace> {
    watch(
        Api::all(client),
        watcher::Config::default(),
        Arc::new(Notify::new()),
    )
}

/// Starts a reflector for the objects of `api` that `config` selects, notifying `changed` on every
/// event it applies.
fn watch<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(%error, kind = %K::kind(&()), "watch error; retrying"),
            }
        }
    });
    store
}

/// Labels of namespaces, for selectors (kept by the webhook's own reflector).
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;
