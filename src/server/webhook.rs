//! The admission HTTP endpoints: `POST /validate`, `POST /mutate`, and `POST /registryx/events` for
//! RegistryX push notifications. Parsing, deadlines and size limits live here; decisions in `admission`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::Deserialize;

use crate::admission::Admission;

/// The API server allows at most 30 s, and defaults to 10 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the answer needs to travel back: the work stops this much before the API server gives up.
const MARGIN: Duration = Duration::from_millis(500);
/// AdmissionReviews of real pods are a few KiB; the API server's own request limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 << 20;

#[derive(Clone)]
pub struct WebhookState {
    admission: Arc<Admission>,
    notifications: Arc<Mutex<RateLimit>>,
}

impl WebhookState {
    pub fn new(admission: Arc<Admission>) -> WebhookState {
        WebhookState {
            admission,
            notifications: Arc::new(Mutex::new(RateLimit::new(20.0, 40.0))),
        }
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/registryx/events", post(registryx_event))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn validate(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    review(&state, &query, &body, false).await
}

async fn mutate(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    review(&state, &query, &body, true).await
}

async fn review(
    state: &WebhookState,
    query: &HashMap<String, String>,
    body: &[u8],
    mutate: bool,
) -> Response {
    let started = Instant::now();
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            tracing::warn!(%error, mutate, "refused a body that is not an AdmissionReview");
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not an AdmissionReview: {error}"),
            )
                .into_response();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            let response = AdmissionResponse::invalid(format!(
                "the AdmissionReview holds no usable request: {error}"
            ));
            return Json(response.into_review()).into_response();
        }
    };
    let budget = query
        .get("timeout")
        .and_then(|t| parse_timeout(t))
        .unwrap_or(DEFAULT_TIMEOUT);
    let deadline = started
        + budget
            .saturating_sub(MARGIN)
            .max(Duration::from_millis(100));
    // Everything below honours the deadline; this is the backstop that guarantees an answer in time.
    let response = match tokio::time::timeout_at(
        deadline.into(),
        state.admission.review(&request, deadline, mutate),
    )
    .await
    {
        Ok(response) => response,
        Err(_) if mutate => AdmissionResponse::from(&request),
        Err(_) => AdmissionResponse::from(&request).deny(format!(
            "registryx-guard could not decide within the {budget:?} the API server allows"
        )),
    };
    Json(response.into_review()).into_response()
}

/// The API server's `timeout` query parameter: a Go duration such as `10s` or `1500ms`.
fn parse_timeout(value: &str) -> Option<Duration> {
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| value.split_at(i))
        .unwrap_or((value, "s"));
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(30.0)))
}

/// A RegistryX push notification. It carries no signature: it is only a hint to drop cached results,
/// never evidence that anything is signed.
#[derive(Deserialize)]
struct PushEvent {
    action: String,
    repository: String,
}

async fn registryx_event(State(state): State<WebhookState>, body: Bytes) -> Response {
    let allowed = state
        .notifications
        .lock()
        .map(|mut limit| limit.try_take())
        .unwrap_or(false);
    if !allowed {
        return (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
    }
    let event: PushEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a RegistryX push event: {error}"),
            )
                .into_response();
        }
    };
    if event.action != "push" {
        return (StatusCode::ACCEPTED, "ignored").into_response();
    }
    tracing::info!(repository = %event.repository, "RegistryX push: dropping cached results");
    state
        .admission
        .verifier()
        .invalidate_repository(&event.repository);
    (StatusCode::ACCEPTED, "cache dropped").into_response()
}

/// A token bucket: `rate` per second, bursts up to `burst`.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn try_take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_like_go_durations() {
        assert_eq!(parse_timeout("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("5"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_timeout("2m"),
            Some(Duration::from_secs(30)),
            "capped at the API server's maximum"
        );
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_timeout("0s"), None);
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refuses() {
        let mut limit = RateLimit::new(1.0, 3.0);
        assert!((0..3).all(|_| limit.try_take()));
        assert!(!limit.try_take());
    }
}
