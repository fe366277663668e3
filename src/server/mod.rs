//! HTTP servers: the HTTPS admission endpoints and, on a separate plain port, the probes and Prometheus
//! metrics that the kubelet and the monitoring stack scrape.

pub mod events;
mod keepalive;
mod metrics;
mod probes;
mod tls;
pub mod webhook;

use std::sync::Arc;

pub use keepalive::{Draining, HEAD_TIMEOUT, IDLE_TIMEOUT};
pub use probes::{Probes, router as probes_router};
pub use tls::{
    CertificateReloader, ConnectionLimits, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER, serve_https, serve_https_with, server_config,
};

use std::future::IntoFuture as _;
use std::time::Duration;

use crate::admission::{Admission, AdmissionMetrics, AdmissionSettings};
use crate::cli::ServeArgs;
use crate::policy::authority::NoSecrets;
use crate::policy::{PolicySnapshot, Publisher, dir};
use crate::verify::{Verifier, VerifierSettings};
use crate::{Error, Result};

/// Runs the server until SIGTERM or Ctrl-C: the admission endpoints over HTTPS, the probes and metrics
/// over plain HTTP, and the policy source (the cluster's controller, or a folder).
pub async fn serve(args: ServeArgs) -> Result<()> {
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AdmissionMetrics::register(&mut registry, verifier.clone());
    let snapshot = crate::policy::shared(PolicySnapshot::default());
    let event_counters = Arc::new(events::EventCounters::default());
    registry.register_collector(Box::new(metrics::ServerCollector {
        snapshot: snapshot.clone(),
        events: event_counters.clone(),
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
            tokio::spawn(watch_policy_dir(
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
            let settings =
                crate::controller::ControllerSettings::new(&args.namespace, &args.identity);
            let namespaces = crate::controller::namespace_store(client.clone());
            let (store, ready) = (namespaces.clone(), probes.clone());
            tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    ready.set_namespaces_synced();
                }
            });
            let (snapshot, probes, controller_client) =
                (snapshot.clone(), probes.clone(), client.clone());
            tokio::spawn(async move {
                let synced = probes.clone();
                if let Err(error) =
                    crate::controller::run(controller_client, snapshot, settings, move || {
                        synced.set_policies_synced()
                    })
                    .await
                {
                    tracing::error!(%error, "the policy controller stopped");
                }
            });
            Some((namespaces, client))
        }
    };

    let settings = AdmissionSettings {
        unmatched: args.unmatched,
        environment: args.environment.clone(),
        ..AdmissionSettings::default()
    };
    let (store, client) = namespaces.unzip();
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
    let events = events::EventsToken::new(args.events_token.as_deref()).map_err(Error::Config)?;
    let webhook = webhook::router(webhook::WebhookState::with_events(
        admission,
        events,
        event_counters,
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

async fn stopped_signal(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Reloads the folder when a file changes. A folder that stops parsing keeps the last good snapshot:
/// a half-edited file must not drop enforcement. A change is loaded only once the folder has held still
/// for a whole poll interval: a file caught while being written in place (truncated, or half its lines)
/// parses more often than not, as no policy or one without its authorities, and publishing that would
/// refuse the images it governs until the next poll. Renaming a finished file into place (what
/// ConfigMap mounts and most editors do) is published one interval later.
/// Polls a changing `--policy-dir` may wait for the folder to hold still.
const MAX_SETTLING: u32 = 10;

async fn watch_policy_dir(folder: std::path::PathBuf, mut publisher: Publisher, namespace: String) {
    let mut seen = dir::fingerprint(&folder);
    let mut settling = None;
    loop {
        tokio::time::sleep(dir::POLL_INTERVAL).await;
        let now = dir::fingerprint(&folder);
        if now == seen {
            settling = None;
            continue;
        }
        // A folder that never holds still (a file rewritten more often than every interval) is
        // loaded anyway after MAX_SETTLING polls, rather than never.
        match &mut settling {
            Some((pending, polls)) if *pending == now || *polls >= MAX_SETTLING => {}
            Some((pending, polls)) => {
                *pending = now;
                *polls += 1;
                continue;
            }
            None => {
                settling = Some((now, 1));
                continue;
            }
        }
        settling = None;
        seen = now;
        match dir::load_dir(&folder) {
            Ok(policies) => {
                publisher.publish(&policies, &NoSecrets, &namespace);
            }
            Err(error) => {
                tracing::error!(%error, "policy folder does not load; keeping the previous policies")
            }
        }
    }
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
