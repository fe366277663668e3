//! The admission HTTP endpoints: `POST /validate`, `POST /mutate`, and `POST /registryx/events` for
//! RegistryX push notifications. Parsing and deadlines live here; bodies are read under `body`'s
//! budget, decisions are `admission`'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use super::body::{BODY_BUDGET_BYTES, BodyBudget, PEER_BUDGET_SHARE, read_body};
use super::push::{PushEvents, PushToken};
use crate::admission::Admission;
use crate::refusal::{Failure, Reason};

/// The API server allows at most 30 s, and defaults to 10 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the answer needs to travel back: the work stops this much before the API server gives up.
const MARGIN: Duration = Duration::from_millis(500);
/// How much earlier than the backstop the work itself gives up.
const BACKSTOP_MARGIN: Duration = Duration::from_millis(200);
#[derive(Clone)]
pub struct WebhookState {
    admission: Arc<Admission>,
    push: PushEvents,
    /// KiB of request bodies being read at once (see [`BODY_BUDGET_BYTES`]), shared fairly by peer.
    body_budget: Arc<BodyBudget>,
}

impl WebhookState {
    /// The endpoints with push events off (no token).
    pub fn new(admission: Arc<Admission>) -> WebhookState {
        WebhookState::with_events_token(admission, PushToken::disabled())
    }

    /// The endpoints with push events authenticated by `token`; starts the task that applies them.
    pub fn with_events_token(admission: Arc<Admission>, token: PushToken) -> WebhookState {
        let push = PushEvents::new(token, admission.verifier().clone(), Arc::default());
        WebhookState::with_push_events(admission, push)
    }

    /// The endpoints with `push` behind /registryx/events; starts the task that applies its events.
    pub fn with_push_events(admission: Arc<Admission>, push: PushEvents) -> WebhookState {
        push.spawn_flusher();
        WebhookState {
            admission,
            push,
            body_budget: Arc::new(BodyBudget::new(
                BODY_BUDGET_BYTES / 1024,
                BODY_BUDGET_BYTES / 1024 / PEER_BUDGET_SHARE,
            )),
        }
    }

    /// Applies pending push events now instead of at the next sweep.
    pub fn flush_events(&self) {
        self.push.flush_now();
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        // Each endpoint reads its body itself, bounded in size, time and (for events) only once the
        // caller is authenticated.
        .route("/registryx/events", post(registryx_event))
        .with_state(state)
}

async fn validate(State(state): State<WebhookState>, request: Request) -> Response {
    receive(&state, request, false).await
}

async fn mutate(State(state): State<WebhookState>, request: Request) -> Response {
    receive(&state, request, true).await
}

/// Reads an AdmissionReview body within its limits, then reviews it. The permits of the body budget
/// are held until the answer is built: the parsed object lives as long as that.
async fn receive(state: &WebhookState, request: Request, mutate: bool) -> Response {
    let (parts, body) = request.into_parts();
    // Percent-decoded by axum's query parser; a malformed query reads as none (the default timeout).
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(&parts.uri)
        .map(|axum::extract::Query(query)| query)
        .unwrap_or_default();
    // Requests that did not come through the TLS server (tests) count as one peer.
    let peer = parts
        .extensions
        .get::<super::listener::PeerAddr>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0);
    let (body, _held) = match read_body(&state.body_budget, peer, body).await {
        Ok(read) => read,
        Err(refusal) => return refusal.into_response(),
    };
    review(state, &query, &body, mutate).await
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
    // The work stops a little before the backstop, so that its own reason (which registry, which step)
    // is what the user reads; the backstop only guarantees an answer in time whatever happens.
    let work_deadline = deadline
        .checked_sub(BACKSTOP_MARGIN.min(budget / 10))
        .unwrap_or(deadline);
    let response = match tokio::time::timeout_at(
        deadline.into(),
        state.admission.review(&request, work_deadline, mutate),
    )
    .await
    {
        Ok(response) => response,
        Err(_) if mutate => AdmissionResponse::from(&request),
        Err(_) => crate::admission::response::refuse(
            AdmissionResponse::from(&request),
            &Failure::new(
                Reason::Unreachable,
                format!(
                    "registryx-guard could not decide within the {budget:?} the API server allows"
                ),
            ),
        ),
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

/// RegistryX push notifications: see [`super::push`].
async fn registryx_event(State(state): State<WebhookState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    state
        .push
        .handle(&parts.headers, &parts.uri, body)
        .await
        .into_response()
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
}
