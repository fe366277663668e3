//! RegistryX push notifications (`POST /registryx/events`): hints that a repository changed, so that its
//! cached verdicts are dropped. They are never evidence of anything, and the endpoint shares the TLS port
//! that every pod in the cluster can reach, so it is built to survive whoever calls it:
//!
//! - **authenticated** before the body is read: a shared token, as `Authorization: Bearer <token>` or,
//!   because RegistryX's `WEBHOOK_URL` can carry nothing but a URL, as `?token=<token>`; without a
//!   configured token the endpoint is off;
//! - **bounded**: a 64 KiB body read under a timeout, a repository name checked against the
//!   distribution grammar (at most 255 characters);
//! - **coalesced**: names go into a bounded set that one task drains every [`FLUSH_INTERVAL`] with a
//!   single cache sweep, so a flood of events costs one sweep, repeated names cost nothing, and a set
//!   that fills up drops every cached verdict instead of refusing genuine events;
//! - **shared**: an event reaches one replica through the Service; each sweep is passed to the others
//!   through a ConfigMap ([`share`]), so that every replica drops its cached verdicts within a second.

pub mod share;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::verify::Verifier;

/// A push event is ~200 bytes; anything near this is not one.
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// The whole body must arrive within this: a caller that stalls is dropped.
pub const EVENT_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused caller's small body is waited for (see [`discard_small_body`]).
const REFUSED_BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// Distinct repositories held between two sweeps; beyond, every cached verdict is dropped at once.
pub const MAX_PENDING_REPOSITORIES: usize = 1024;
/// How often pending repositories are swept out of the caches.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// The distribution spec's limit on a repository name.
pub const MAX_REPOSITORY_LENGTH: usize = 255;

/// The shared token that authenticates RegistryX (stored as its SHA-256, compared in constant time).
#[derive(Clone)]
pub struct PushToken(Option<[u8; 32]>);

impl PushToken {
    /// `None` turns the endpoint off. A token shorter than 16 characters is refused: it would be guessed.
    pub fn new(token: Option<&str>) -> Result<PushToken, String> {
        match token.map(str::trim) {
            None | Some("") => Ok(PushToken(None)),
            Some(token) if token.len() < 16 => Err(format!(
                "the push-events token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                token.len()
            )),
            Some(token) => Ok(PushToken(Some(Sha256::digest(token.as_bytes()).into()))),
        }
    }

    pub fn disabled() -> PushToken {
        PushToken(None)
    }

    /// Whether the endpoint is on.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    fn accepts(&self, given: &str) -> bool {
        let Some(expected) = &self.0 else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Constant time: the difference of every byte is folded before one comparison.
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What the endpoint did, for `/metrics`.
#[derive(Debug, Default)]
pub struct PushCounters {
    /// Requests that reached the endpoint.
    pub received: std::sync::atomic::AtomicU64,
    /// Refused: no or a wrong token, too large, too slow, not an event, a bad repository name.
    pub refused: std::sync::atomic::AtomicU64,
    /// Repositories whose cached results were dropped (after coalescing).
    pub repositories_dropped: std::sync::atomic::AtomicU64,
    /// Sweeps that dropped every cached result because too many repositories were pending.
    pub overflows: std::sync::atomic::AtomicU64,
    /// Batches of this replica's sweeps written to the events ConfigMap for the other replicas.
    pub shared: std::sync::atomic::AtomicU64,
    /// Batches of other replicas that this one applied.
    pub from_peers: std::sync::atomic::AtomicU64,
    /// Writes of the events ConfigMap that failed (the local sweep had happened).
    pub share_failures: std::sync::atomic::AtomicU64,
}

/// Repositories waiting for the next sweep.
#[derive(Default)]
struct Pending {
    repositories: HashSet<String>,
    overflowed: bool,
}

/// The endpoint's state: the token, and the pending set that one task sweeps.
#[derive(Clone)]
pub struct PushEvents {
    token: PushToken,
    pending: Arc<Mutex<Pending>>,
    verifier: Arc<Verifier>,
    counters: Arc<PushCounters>,
    /// The other replicas, when events are shared with them.
    share: Option<share::Share>,
}

impl PushEvents {
    pub fn new(
        token: PushToken,
        verifier: Arc<Verifier>,
        counters: Arc<PushCounters>,
    ) -> PushEvents {
        PushEvents {
            token,
            pending: Arc::default(),
            verifier,
            counters,
            share: None,
        }
    }

    /// Shares every sweep with the other replicas through the ConfigMap `name` of `config_maps`, and
    /// applies theirs, as `origin` (this replica's name): starts the writer and the watch on the current
    /// Tokio runtime; they end with the last clone of this state.
    pub fn shared_through(
        mut self,
        config_maps: kube::Api<ConfigMap>,
        name: &str,
        origin: &str,
    ) -> PushEvents {
        self.share = Some(share::Share::start(
            config_maps,
            name,
            origin,
            self.verifier.clone(),
            self.counters.clone(),
        ));
        self
    }

    /// Resolves once the watch of the events ConfigMap has seen it (or found it missing) for the first
    /// time: from then on, what the other replicas write is applied here. At once when not shared.
    pub async fn peers_synced(&self) {
        if let Some(share) = &self.share {
            share.synced().await;
        }
    }

    /// Starts the sweeping task on the current Tokio runtime (none: events wait for [`Self::flush_now`]);
    /// it ends with the last clone of this state.
    pub fn spawn_flusher(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pending = Arc::downgrade(&self.pending);
        let (verifier, counters) = (self.verifier.clone(), self.counters.clone());
        let share = self.share.clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pending) = pending.upgrade() else {
                    return;
                };
                flush(&pending, &verifier, &counters, share.as_ref());
            }
        });
    }

    /// Applies what is pending now (tests, and shutdown).
    pub fn flush_now(&self) {
        flush(
            &self.pending,
            &self.verifier,
            &self.counters,
            self.share.as_ref(),
        );
    }

    /// Handles one request: authentication first, then a bounded read, then validation.
    pub async fn handle(&self, headers: &HeaderMap, uri: &Uri, body: Body) -> (StatusCode, String) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.received.fetch_add(1, Relaxed);
        let answer = self.answer(headers, uri, body).await;
        if answer.0 != StatusCode::ACCEPTED {
            self.counters.refused.fetch_add(1, Relaxed);
        }
        answer
    }

    async fn answer(&self, headers: &HeaderMap, uri: &Uri, body: Body) -> (StatusCode, String) {
        if self.token.0.is_none() {
            return (
                StatusCode::NOT_FOUND,
                "push events are off: start registryx-guard with --events-token".into(),
            );
        }
        // The `headers` crate reads the scheme case-insensitively (`bearer` is `Bearer`, RFC 9110).
        let bearer = headers
            .typed_get::<Authorization<Bearer>>()
            .map(|Authorization(bearer)| bearer);
        let from_query = query_token(uri);
        let authenticated = bearer.is_some_and(|b| self.token.accepts(b.token()))
            || from_query.is_some_and(|t| self.token.accepts(&t));
        if !authenticated {
            discard_small_body(headers, body).await;
            return (
                StatusCode::UNAUTHORIZED,
                "push events need the shared token".into(),
            );
        }
        let bytes = match tokio::time::timeout(
            EVENT_BODY_TIMEOUT,
            axum::body::to_bytes(body, MAX_EVENT_BYTES),
        )
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a push event is at most {MAX_EVENT_BYTES} bytes"),
                );
            }
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    "the event did not arrive in time".into(),
                );
            }
        };
        #[derive(Deserialize)]
        struct PushEvent {
            action: String,
            repository: String,
        }
        let event: PushEvent = match serde_json::from_slice(&bytes) {
            Ok(event) => event,
            Err(error) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not a RegistryX push event: {error}"),
                );
            }
        };
        if event.action != "push" {
            return (StatusCode::ACCEPTED, "ignored".into());
        }
        if let Err(reason) = check_repository(&event.repository) {
            return (StatusCode::BAD_REQUEST, reason);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.repositories.len() >= MAX_PENDING_REPOSITORIES
            && !pending.repositories.contains(&event.repository)
        {
            pending.overflowed = true;
        } else {
            pending.repositories.insert(event.repository);
        }
        (
            StatusCode::ACCEPTED,
            "cached results will be dropped".into(),
        )
    }
}

/// Reads and drops a refused request's body when it is event-sized. Over HTTP/2, answering while the
/// body is still unread resets the stream, and clients such as curl and Go's then report a stream error
/// instead of the 401: the sender reads an outage where it should read "wrong token". The read is
/// bounded like an event's, in a second; a body that is larger, undeclared or slow is not worth it and
/// its sender gets the reset.
async fn discard_small_body(headers: &HeaderMap, body: Body) {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length <= MAX_EVENT_BYTES) {
        let _ = tokio::time::timeout(
            REFUSED_BODY_TIMEOUT,
            axum::body::to_bytes(body, MAX_EVENT_BYTES),
        )
        .await;
    }
}

/// Sweeps what is pending out of the caches, then hands the same batch to the other replicas.
fn flush(
    pending: &Mutex<Pending>,
    verifier: &Verifier,
    counters: &PushCounters,
    share: Option<&share::Share>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let taken = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(share) = share {
        share.offer(&taken.repositories, taken.overflowed);
    }
    counters
        .repositories_dropped
        .fetch_add(taken.repositories.len() as u64, Relaxed);
    if taken.overflowed {
        counters.overflows.fetch_add(1, Relaxed);
        tracing::info!("RegistryX push events overflowed: dropping every cached result");
        verifier.invalidate_all();
    } else if !taken.repositories.is_empty() {
        tracing::info!(
            repositories = taken.repositories.len(),
            "RegistryX push: dropping cached results"
        );
        verifier.invalidate_repositories(taken.repositories);
    }
}

/// The distribution spec's repository grammar: path components of lower-case letters and digits joined
/// by `.`, `_`, `__` or runs of `-`, separated by `/`, 255 characters at most.
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_REPOSITORY_LENGTH {
        return Err(format!(
            "a repository name has 1 to {MAX_REPOSITORY_LENGTH} characters, not {}",
            name.len()
        ));
    }
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        if bytes.is_empty()
            || !bytes[0].is_ascii_alphanumeric()
            || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut previous = b'a';
        let mut underscores = 0;
        for &b in bytes {
            let ok = b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
            if !ok || (b == b'.' && b"._-".contains(&previous)) {
                return false;
            }
            underscores = if b == b'_' { underscores + 1 } else { 0 };
            if underscores > 2 || (b == b'_' && b"-.".contains(&previous)) {
                return false;
            }
            previous = b;
        }
        true
    };
    if name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err("the repository name does not follow the distribution grammar".into())
    }
}

/// The `token` query parameter, percent-decoded (a token may be URL-encoded by whoever wrote
/// `WEBHOOK_URL`).
fn query_token(uri: &Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()
        .and_then(|axum::extract::Query(query)| query.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for good in [
            "app", "team/app", "a/b/c", "my-app", "my__app", "v1.2", "a--b",
        ] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", "Team/app", "app/", "/app", "a//b", "-app", "a..b", "a___b", &long, "a b",
        ] {
            assert!(check_repository(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_long_and_compared_whole() {
        assert!(PushToken::new(Some("short")).is_err());
        let token = PushToken::new(Some("0123456789abcdef0123")).unwrap();
        assert!(token.accepts("0123456789abcdef0123"));
        assert!(!token.accepts("0123456789abcdef012"));
        assert!(!PushToken::disabled().accepts(""));
        let uri: Uri = "/registryx/events?x=1&token=a%2Bb+c".parse().unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("a+b c"));
        assert_eq!(query_token(&"/registryx/events".parse().unwrap()), None);
    }
}
