//! HTTP servers: the HTTPS admission endpoints and, on a separate plain port, the probes and Prometheus
//! metrics that the kubelet and the monitoring stack scrape.

mod probes;

use std::sync::Arc;

pub use probes::{Probes, router as probes_router};

use crate::cli::ServeArgs;
use crate::policy::{PolicySnapshot, SharedSnapshot, dir};
use crate::verify::authority::NoSecrets;
use crate::{Error, Result};

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let probes = Probes::default();
    let snapshot = crate::policy::shared(PolicySnapshot::default());
    match &args.policy_dir {
        Some(folder) => {
            // Checked before serving: a wrong folder is a start-up error, not a silent empty policy set.
            let policies = dir::load_dir(folder)?;
            publish(&snapshot, &policies, &args.namespace, 1);
            probes.set_policies_synced();
            tokio::spawn(watch_policy_dir(
                folder.clone(),
                snapshot.clone(),
                args.namespace.clone(),
            ));
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            let settings =
                crate::controller::ControllerSettings::new(&args.namespace, &args.identity);
            let (snapshot, probes) = (snapshot.clone(), probes.clone());
            tokio::spawn(async move {
                let synced = probes.clone();
                if let Err(error) = crate::controller::run(client, snapshot, settings, move || {
                    synced.set_policies_synced()
                })
                .await
                {
                    tracing::error!(%error, "the policy controller stopped");
                }
            });
        }
    }

    let listener = tokio::net::TcpListener::bind(args.probes_listen)
        .await
        .map_err(|source| Error::Bind {
            what: "the probes port",
            addr: args.probes_listen,
            source,
        })?;
    tracing::info!(addr = %args.probes_listen, "serving /healthz, /readyz and /metrics");
    // The admission endpoints that make this replica fully ready are built by the webhook issue (#5).
    tracing::warn!(listen = %args.listen, "admission endpoints are not built yet; this replica never reports ready");
    axum::serve(listener, probes_router(probes))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| Error::Bind {
            what: "the probes port",
            addr: args.probes_listen,
            source,
        })
}

fn publish(
    snapshot: &SharedSnapshot,
    policies: &[crate::policy::ImageSigningPolicy],
    namespace: &str,
    revision: u64,
) {
    let (next, results) = PolicySnapshot::build(policies, &NoSecrets, namespace, revision);
    for (name, result) in &results {
        match result {
            Ok(()) => tracing::info!(policy = %name, "policy ready"),
            Err(message) => {
                tracing::warn!(policy = %name, %message, "policy not ready; its images are refused")
            }
        }
    }
    snapshot.store(Arc::new(next));
}

/// Reloads the folder when a file changes. A folder that stops parsing keeps the last good snapshot:
/// a half-edited file must not drop enforcement.
async fn watch_policy_dir(folder: std::path::PathBuf, snapshot: SharedSnapshot, namespace: String) {
    let mut seen = dir::fingerprint(&folder);
    let mut revision = 1;
    loop {
        tokio::time::sleep(dir::POLL_INTERVAL).await;
        let now = dir::fingerprint(&folder);
        if now == seen {
            continue;
        }
        seen = now;
        match dir::load_dir(&folder) {
            Ok(policies) => {
                revision += 1;
                publish(&snapshot, &policies, &namespace, revision);
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
