//! HTTP servers: the HTTPS admission endpoints and, on a separate plain port, the probes and Prometheus
//! metrics that the kubelet and the monitoring stack scrape.

mod probes;

pub use probes::{Probes, router as probes_router};

use crate::cli::ServeArgs;
use crate::{Error, Result};

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let probes = Probes::default();
    let listener = tokio::net::TcpListener::bind(args.probes_listen)
        .await
        .map_err(|source| Error::Bind {
            what: "the probes port",
            addr: args.probes_listen,
            source,
        })?;
    tracing::info!(addr = %args.probes_listen, "serving /healthz, /readyz and /metrics");
    // Readiness stays false: the admission endpoints and the policy sync that make this replica ready
    // are built by the webhook and controller issues (#4, #5).
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
