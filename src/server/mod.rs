//! HTTP servers: the HTTPS admission endpoints and, on a separate plain port, the probes and Prometheus
//! metrics that the kubelet and the monitoring stack scrape.

mod args;
pub mod body;
mod certs;
mod keepalive;
mod listener;
mod metrics;
mod probes;
pub mod push;
pub mod webhook;

use std::sync::Arc;

pub use args::ServeArgs;
pub use certs::{CertificateReloader, server_config};
pub use keepalive::{Draining, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTION_AGE};
pub use listener::{
    ConnectionLimits, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER, serve_https,
    serve_https_with,
};
pub use probes::{Probes, router as probes_router};

use std::future::IntoFuture as _;
use std::time::Duration;

use crate::admission::{Admission, AdmissionMetrics, AdmissionSettings};
use crate::policy::authority::NoSecrets;
use crate::policy::{PolicySnapshot, Publisher, dir};
use crate::verify::Verifier;
use crate::{Error, Result};

/// Runs the server until SIGTERM or Ctrl-C: the admission endpoints over HTTPS, the probes and metrics
/// over plain HTTP, and the policy source (the cluster's controller, or a folder).
pub async fn serve(args: ServeArgs) -> Result<()> {
    let verifier = Arc::new(Verifier::new(args.verifier_settings()?, None));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AdmissionMetrics::register(&mut registry, verifier.clone());
    let audit_metrics = crate::audit::AuditMetrics::register(&mut registry);
    let snapshot = crate::policy::shared(PolicySnapshot::default());
    let push_counters = Arc::new(push::PushCounters::default());
    registry.register_collector(Box::new(metrics::ServerCollector {
        snapshot: snapshot.clone(),
        push: push_counters.clone(),
    }));
    let probes = Probes::with_metrics(registry);
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let namespaces = match &args.policy_dir {
        Some(folder) => {
            // Checked before serving: a wrong folder is a start-up error, not a silent empty policy set.
            let policies = dir::load_dir(folder)?;
            let mut publisher = Publisher::new(snapshot.clone());
            publisher.publish(&policies, &NoSecrets, &args.namespace);
            probes.set_policies_synced();
            probes.set_namespaces_synced(); // no cluster: selectors do not restrict
            tokio::spawn(dir::watch(
                folder.clone(),
                publisher,
                args.namespace.clone(),
            ));
            None
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            let mut settings =
                crate::controller::ControllerSettings::new(&args.namespace, &args.identity);
            settings.events_config_map = args.events_configmap.clone();
            let namespaces = crate::controller::namespace_store(client.clone());
            if args.audit {
                let mut audit = crate::audit::Audit::new(
                    client.clone(),
                    snapshot.clone(),
                    verifier.clone(),
                    namespaces.clone(),
                    settings.audit.clone(),
                    args.audit_settings(),
                    audit_metrics,
                );
                if args.policy_reports {
                    audit =
                        audit.with_sink(Arc::new(crate::audit::ReportsSink::new(client.clone())));
                }
                tokio::spawn(audit.run(stopped_signal(stopped.clone())));
            }
            let (store, ready) = (namespaces.clone(), probes.clone());
            tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    ready.set_namespaces_synced();
                }
            });
            let (snapshot, probes, controller_client) =
                (snapshot.clone(), probes.clone(), client.clone());
            let shutdown = stopped_signal(stopped.clone());
            let controller = tokio::spawn(async move {
                let synced = probes.clone();
                if let Err(error) = crate::controller::run_until(
                    controller_client,
                    snapshot,
                    settings,
                    move || synced.set_policies_synced(),
                    shutdown,
                )
                .await
                {
                    tracing::error!(%error, "the policy controller stopped");
                }
            });
            Some((namespaces, client, controller))
        }
    };

    let settings = AdmissionSettings {
        unmatched: args.unmatched,
        environment: args.environment.clone(),
        ..AdmissionSettings::default()
    };
    let (store, client, controller) = match namespaces {
        Some((store, client, controller)) => (Some(store), Some(client), Some(controller)),
        None => (None, None, None),
    };
    let push_token = push::PushToken::new(args.events_token.as_deref()).map_err(Error::Config)?;
    let mut push_events =
        push::PushEvents::new(push_token.clone(), verifier.clone(), push_counters);
    match (&args.events_configmap, &client) {
        (Some(name), Some(client)) if push_token.is_enabled() => {
            push_events = push_events.shared_through(
                kube::Api::namespaced(client.clone(), &args.namespace),
                name,
                &args.identity,
            );
        }
        (Some(_), None) => tracing::info!(
            "--events-configmap needs the cluster: with --policy-dir, push events stay on this process"
        ),
        _ => {}
    }
    let mut admission = Admission::new(snapshot, verifier, store, settings, Some(metrics));
    if let Some(client) = client {
        admission = admission
            .with_refusal_events(crate::admission::events::RefusalEvents::new(
                client.clone(),
                &args.identity,
            ))
            .with_namespace_lookup(client);
    }
    let admission = Arc::new(admission);
    let reloader = CertificateReloader::load(&args.tls_cert, &args.tls_key)?;
    reloader.spawn_watch(Duration::from_secs(5));
    probes.set_tls_loaded();
    let https = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            what: "the admission port",
            addr: args.listen,
            source,
        })?;
    let plain = tokio::net::TcpListener::bind(args.probes_listen)
        .await
        .map_err(|source| Error::Bind {
            what: "the probes port",
            addr: args.probes_listen,
            source,
        })?;
    tracing::info!(listen = %args.listen, probes = %args.probes_listen, "serving /validate, /mutate and /registryx/events over HTTPS; probes and metrics over HTTP");

    let (draining, drain) = (
        probes.clone(),
        Duration::from_secs(args.shutdown_delay_seconds),
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        // Keep answering while the cluster takes this replica out of the Service: the API server dials
        // endpoints directly, and a webhook that stopped at once would fail the admissions routed to it
        // in that window (failurePolicy: Fail). Not ready first, then the drain (during which HTTP/1.1
        // connections close after a response rather than idle), then the stop.
        draining.set_shutting_down();
        tracing::info!(
            seconds = drain.as_secs(),
            "shutting down: not ready, draining"
        );
        tokio::time::sleep(drain).await;
        let _ = stop.send(true);
    });
    let webhook = webhook::router(webhook::WebhookState::with_push_events(
        admission,
        push_events,
    ));
    let limits = ConnectionLimits {
        total: args.max_connections.max(1),
        per_peer: args.max_connections_per_peer.max(1),
    };
    let https = serve_https_with(
        https,
        server_config(reloader)?,
        webhook,
        probes.draining(),
        limits,
        stopped_signal(stopped.clone()),
    );
    let probes_server =
        axum::serve(plain, probes_router(probes)).with_graceful_shutdown(stopped_signal(stopped));
    let (https, probes_result) = tokio::join!(https, probes_server.into_future());
    // The controller releases the status-writer Lease on the same stop; a slow API server must not hold
    // the exit beyond a bound.
    if let Some(controller) = controller
        && tokio::time::timeout(LEASE_RELEASE_LIMIT, controller)
            .await
            .is_err()
    {
        tracing::warn!("the status-writer lease was not released in time; it expires on its own");
    }
    https.map_err(|source| Error::Bind {
        what: "the admission port",
        addr: args.listen,
        source,
    })?;
    probes_result.map_err(|source| Error::Bind {
        what: "the probes port",
        addr: args.probes_listen,
        source,
    })
}

/// How long a stop waits for the controller to give up its Lease.
const LEASE_RELEASE_LIMIT: Duration = Duration::from_secs(5);

async fn stopped_signal(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
