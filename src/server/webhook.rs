//! The admission HTTP endpoints: `POST /validate`, `POST /mutate`, and `POST /registryx/events` for
//! RegistryX push notifications. Parsing, deadlines and size limits live here; decisions in `admission`.

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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::events::{EventCounters, EventsToken, PushEvents};
use crate::admission::Admission;

/// The API server allows at most 30 s, and defaults to 10 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the answer needs to travel back: the work stops this much before the API server gives up.
const MARGIN: Duration = Duration::from_millis(500);
/// How much earlier than the backstop the work itself gives up.
const BACKSTOP_MARGIN: Duration = Duration::from_millis(200);
/// AdmissionReviews of real pods are a few KiB; the API server's own request limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// The API server sends a review at once; a body still arriving after this is a caller stalling.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request bodies being read (and parsed) at once, over all connections and streams: 64 MiB of
/// budget, so that a flood of large or stalled bodies is bounded in memory (the chart's limit is
/// 256 MiB) and waits its turn. A received byte costs [`BUDGET_PER_BYTE`] bytes of it: the parsed
/// review and its copies weigh several times the raw JSON.
pub const BODY_BUDGET_BYTES: usize = 64 << 20;
/// What one received byte costs of [`BODY_BUDGET_BYTES`].
pub const BUDGET_PER_BYTE: usize = 4;
/// The share of [`BODY_BUDGET_BYTES`] one peer address may hold: a caller that stalls many bodies
/// holds its own share, not the budget the API server's reviews need.
pub const PEER_BUDGET_SHARE: usize = 4;

#[derive(Clone)]
pub struct WebhookState {
    admission: Arc<Admission>,
    events: PushEvents,
    /// KiB of request bodies being read at once (see [`BODY_BUDGET_BYTES`]).
    body_budget: Arc<Semaphore>,
    /// Each peer's share of it (see [`PEER_BUDGET_SHARE`]), bounded and evicted when idle.
    peer_budgets: moka::sync::Cache<std::net::IpAddr, Arc<Semaphore>>,
}

impl WebhookState {
    /// The endpoints with push events off (no token).
    pub fn new(admission: Arc<Admission>) -> WebhookState {
        WebhookState::with_events_token(admission, EventsToken::disabled())
    }

    /// The endpoints with push events authenticated by `token`; starts the task that applies them.
    pub fn with_events_token(admission: Arc<Admission>, token: EventsToken) -> WebhookState {
        WebhookState::with_events(admission, token, Arc::default())
    }

    /// As [`WebhookState::with_events_token`], counting what the events endpoint does in `counters`.
    pub fn with_events(
        admission: Arc<Admission>,
        token: EventsToken,
        counters: Arc<EventCounters>,
    ) -> WebhookState {
        let events = PushEvents::new(token, admission.verifier().clone(), counters);
        events.spawn_flusher();
        WebhookState {
            admission,
            events,
            body_budget: Arc::new(Semaphore::new(BODY_BUDGET_BYTES / 1024)),
            peer_budgets: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    /// Applies pending push events now instead of at the next sweep.
    pub fn flush_events(&self) {
        self.events.flush_now();
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
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    // Requests that did not come through the TLS server (tests) count as one peer.
    let peer = parts
        .extensions
        .get::<super::tls::PeerAddr>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0);
    let share = state.peer_budgets.get_with(peer, || {
        Arc::new(Semaphore::new(BODY_BUDGET_BYTES / 1024 / PEER_BUDGET_SHARE))
    });
    let (body, _permits) = match read_body(&state.body_budget, &share, body).await {
        Ok(read) => read,
        Err(refusal) => return refusal.into_response(),
    };
    review(state, &query, &body, mutate).await
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`], taking a share of the
/// [`BODY_BUDGET_BYTES`] that all bodies being read share, so that stalled or huge bodies on many
/// connections cannot add up to more memory than the budget.
async fn read_body(
    budget: &Arc<Semaphore>,
    share: &Arc<Semaphore>,
    body: axum::body::Body,
) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), (StatusCode, String)> {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let too_slow = || {
        (
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )
    };
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an AdmissionReview is at most {MAX_BODY_BYTES} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    // This peer's share first (a caller that stalls waits on its own share), then the whole budget.
    let mut held: [Option<OwnedSemaphorePermit>; 2] = [None, None];
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => return Ok((bytes, held.into_iter().flatten().collect())),
            Ok(Some(Err(_))) => {
                return Err((StatusCode::BAD_REQUEST, "the body could not be read".into()));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        let kib = ((bytes.len() + chunk.len()).div_ceil(1024) - bytes.len().div_ceil(1024))
            * BUDGET_PER_BYTE;
        if kib > 0 {
            for (semaphore, held) in [share, budget].into_iter().zip(held.iter_mut()) {
                let permit = tokio::time::timeout_at(
                    deadline,
                    semaphore.clone().acquire_many_owned(kib as u32),
                )
                .await
                .map_err(|_| too_slow())?
                .map_err(|_| too_slow())?;
                match held {
                    Some(held) => held.merge(permit),
                    None => *held = Some(permit),
                }
            }
        }
        bytes.extend_from_slice(&chunk);
    }
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

/// RegistryX push notifications: see [`super::events`].
async fn registryx_event(State(state): State<WebhookState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    state
        .events
        .handle(&parts.headers, parts.uri.query(), body)
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
