//! Liveness, readiness and metrics on the plain port. Kept apart from the admission router so that a
//! slow admission can never make the kubelet think the process is dead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Shared state of the probes: readiness flags and the metrics registry.
#[derive(Clone, Default)]
pub struct Probes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    policies_synced: AtomicBool,
    namespaces_synced: AtomicBool,
    tls_loaded: AtomicBool,
    /// Set on SIGTERM: not ready, and HTTP/1.1 connections close after their next response.
    draining: super::Draining,
    metrics: Registry,
}

impl Probes {
    pub fn with_metrics(metrics: Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                ..Inner::default()
            }),
        }
    }

    pub fn set_policies_synced(&self) {
        self.inner.policies_synced.store(true, Ordering::Release);
    }

    /// The namespace cache holds every namespace's labels (set at once when there is no cluster).
    pub fn set_namespaces_synced(&self) {
        self.inner.namespaces_synced.store(true, Ordering::Release);
    }

    /// The process is stopping: not ready any more, so that the Service stops routing to it, and its
    /// HTTP/1.1 connections close after their next response (the admission server reads the same flag).
    pub fn set_shutting_down(&self) {
        self.inner.draining.start();
    }

    /// The flag [`Probes::set_shutting_down`] sets, for the admission server.
    pub fn draining(&self) -> super::Draining {
        self.inner.draining.clone()
    }

    pub fn set_tls_loaded(&self) {
        self.inner.tls_loaded.store(true, Ordering::Release);
    }

    /// Ready once the first full policy sync is done, the namespaces' labels that `namespaceSelector`s
    /// read are synced, and a certificate is loaded: before that, a decision could be wrong.
    pub fn is_ready(&self) -> bool {
        self.inner.policies_synced.load(Ordering::Acquire)
            && self.inner.namespaces_synced.load(Ordering::Acquire)
            && self.inner.tls_loaded.load(Ordering::Acquire)
            && !self.inner.draining.is_draining()
    }
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    if probes.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the policy sync, the namespace labels and the TLS certificate",
        )
    }
}

async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &probes.inner.metrics) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt as _;

    async fn get(probes: &Probes, path: &str) -> (StatusCode, String) {
        let response = router(probes.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_only_after_sync_and_tls() {
        let probes = Probes::default();
        assert_eq!(get(&probes, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&probes, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        probes.set_policies_synced();
        assert_eq!(
            get(&probes, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        probes.set_tls_loaded();
        assert_eq!(
            get(&probes, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready before the namespaces' labels are synced"
        );
        probes.set_namespaces_synced();
        assert_eq!(
            get(&probes, "/readyz").await,
            (StatusCode::OK, "ready".to_owned())
        );
    }

    #[tokio::test]
    async fn metrics_are_exposed_in_openmetrics_text() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register(
            "admission_reviews",
            "Admission reviews answered",
            counter.clone(),
        );
        counter.inc();
        let (status, body) = get(&Probes::with_metrics(registry), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("admission_reviews_total 1"), "{body}");
    }
}
