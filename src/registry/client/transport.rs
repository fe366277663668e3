//! The transport under the distribution API: one request sent within the deadline and the registry's
//! request slots, redirects followed only to the hosts the policies name, bodies read under their caps
//! and the read budgets, and every answer that is not a registry's own error turned into the same words
//! as no answer at all; which HTTP client a URL is read with. Nothing here knows what a manifest or a
//! token is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Method, Response};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{RegistryClient, RegistryConfig};
use crate::registry::{ErrorKind, RegistryError, Step};

/// Bytes of registry answers held at once, over every registry: being read, and, for manifests, until
/// the caller drops them. What a crowd of hostile registries answering megabytes can make the process
/// hold; with the per-registry share below, one registry never takes more than a sixth of it. Two
/// registries answering 3.5 MB to 96 images at once peak under 190 MiB resident (tests/containment.rs),
/// under the chart's 256 MiB. Readers past either bound wait (within their deadline) instead of growing
/// the heap.
pub const BODY_BYTES_IN_FLIGHT: usize = 24 << 20;

/// Bytes of one registry's answers held at once: one manifest at the 4 MiB cap, or any number of the
/// kilobyte answers honest signature reads are.
pub const REGISTRY_BODY_BYTES_IN_FLIGHT: usize = 4 << 20;

/// [`BODY_BYTES_IN_FLIGHT`] in KiB permits.
static BODY_BUDGET: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(BODY_BYTES_IN_FLIGHT >> 10)));

/// A registry's answer with this registry's request slot, held until it is dropped: a response whose
/// body is not read yet has some of it in memory already (hyper reads ahead into its connection
/// buffer before the read budget applies), so the slot counts until the body is read or dropped.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) response: Response,
    pub(super) _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Answer {
    type Target = Response;

    fn deref(&self) -> &Response {
        &self.response
    }
}

impl std::ops::DerefMut for Answer {
    fn deref_mut(&mut self) -> &mut Response {
        &mut self.response
    }
}

/// The share of the read budgets an answer's bytes hold: given back when dropped.
#[derive(Debug, Default)]
pub struct Held(Vec<tokio::sync::OwnedSemaphorePermit>);

/// Where a registry's redirects may lead: the hosts the policies name, nothing else.
///
/// A governed registry is a party the gate distrusts: a redirect to `http://127.0.0.1:<port>/...` or to
/// a cloud metadata address would make the webhook read an internal service on the registry's behalf
/// (and, without the allow-list, tell a refusal whether that port is open). So a redirect is followed
/// only to the registry's own host and port, the token hosts and the redirect hosts of its policy.
#[derive(Debug)]
pub(crate) struct RedirectRule {
    /// Host and port of the registry's distribution API.
    host: String,
    port: Option<u16>,
    /// Named hosts, lower case, each with its port if one was named; `*.example.com` is any host under
    /// example.com.
    hosts: Vec<(String, Option<u16>)>,
}

impl RedirectRule {
    pub(super) fn new(base: &str, config: &RegistryConfig, docker_hub: bool) -> RedirectRule {
        let base = reqwest::Url::parse(base).ok();
        let mut hosts: Vec<(String, Option<u16>)> = config
            .token_hosts
            .iter()
            .chain(&config.redirect_hosts)
            .filter_map(|named| named_host(named))
            .collect();
        if docker_hub {
            // Docker Hub's token service and blob CDN, which every Hub pull meets.
            hosts.extend(
                ["auth.docker.io", "production.cloudflare.docker.com"]
                    .map(|host| (host.to_owned(), None)),
            );
        }
        RedirectRule {
            host: base
                .as_ref()
                .and_then(|b| b.host_str().map(str::to_ascii_lowercase))
                .unwrap_or_default(),
            port: base.as_ref().and_then(reqwest::Url::port_or_known_default),
            hosts,
        }
    }

    /// Whether a redirect to `url` may be followed.
    pub(crate) fn allows(&self, url: &reqwest::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let Some(host) = url
            .host_str()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        else {
            return false;
        };
        if host == self.host && url.port_or_known_default() == self.port {
            return true;
        }
        self.hosts.iter().any(|(named, port)| {
            let host_matches = match named.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => *named == host,
            };
            host_matches && port.is_none_or(|port| url.port_or_known_default() == Some(port))
        })
    }
}

/// A host as a policy names it (`blobs.example.com`, `*.example.com`, `10.0.0.5:9000`, `[::1]:5000`):
/// lower case, without a trailing dot, and its port if it has one.
fn named_host(named: &str) -> Option<(String, Option<u16>)> {
    let named = named.trim().to_ascii_lowercase();
    let (wildcard, rest) = match named.strip_prefix("*.") {
        Some(rest) => ("*.", rest),
        None => ("", named.as_str()),
    };
    let url = reqwest::Url::parse(&format!("http://{rest}/")).ok()?;
    let host = url.host_str()?.trim_end_matches('.');
    (!host.is_empty()).then(|| (format!("{wildcard}{host}"), url.port()))
}

/// The error a refused redirect ends its request with, found again by [`refused_redirect`].
#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect to {} refused", self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// The host of a redirect that [`RedirectRule`] refused, if that is what ended `error`.
fn refused_redirect(error: &reqwest::Error) -> Option<String> {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(inner) = source {
        if let Some(refused) = inner.downcast_ref::<RedirectRefused>() {
            return Some(refused.0.clone());
        }
        source = inner.source();
    }
    None
}

/// Redirects followed in a row at most (reqwest's own default).
const MAX_REDIRECTS: usize = 10;

/// A reqwest client for one registry: trusting the caBundle's `certificates`, and the system's roots
/// unless `system_roots` is false (then only the caBundle's); following redirects only where `rule`
/// allows.
pub(super) fn build_http(
    config: &RegistryConfig,
    certificates: Vec<reqwest::Certificate>,
    system_roots: bool,
    rule: Arc<RedirectRule>,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(config.max_concurrent_requests)
        .user_agent(concat!("registryx-guard/", env!("CARGO_PKG_VERSION")));
    let builder = if system_roots {
        builder.tls_certs_merge(certificates)
    } else {
        builder.tls_certs_only(certificates)
    };
    builder
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if !rule.allows(attempt.url()) {
                let host = attempt.url().host_str().unwrap_or("").to_owned();
                attempt.error(RedirectRefused(crate::untrusted::quote(&host)))
            } else if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("more than 10 redirects")
            } else if !system_roots && attempt.url().scheme() == "https" {
                // Without the system's roots, a redirect to HTTPS (blob storage's presigned URLs) is
                // not followed here but handed back to `execute`, which follows it with the client
                // that has them.
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
}

pub(super) fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A distribution-API error body (`{"errors":[{"code","message"}]}` with at least one entry), if `body`
/// is one.
pub(super) fn registry_errors(body: &[u8]) -> Option<Vec<ErrorEntry>> {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    serde_json::from_slice::<Errors>(body)
        .ok()
        .map(|e| e.errors)
        .filter(|e| !e.is_empty())
}

#[derive(Deserialize)]
pub(super) struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The message of a distribution-API error body (`{"errors":[{"code","message"}]}`), each message
/// shortened and stripped of control characters. Any other body is never quoted: a refusal is shown to
/// whoever created the pod, and an image naming an internal service must not make its answers readable.
pub(super) fn error_message(body: &[u8]) -> String {
    if let Some(errors) = registry_errors(body) {
        let words = errors
            .iter()
            .take(3)
            .map(|e| {
                let code = crate::untrusted::excerpt(&e.code, 40);
                let message = crate::untrusted::excerpt(&e.message, 160);
                if code.is_empty() {
                    message
                } else {
                    format!("{code} {message}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        return crate::untrusted::their_words("the registry", &words);
    }
    if body.is_empty() {
        return "empty answer".into();
    }
    "an answer that is not a registry error (not shown)".to_owned()
}

/// Logs what failed: the error itself reads the same whatever the cause (a closed port, a reset, a TLS
/// failure, something that is not a registry), since a refusal must not tell a caller which internal
/// ports are open. The cause goes to the webhook's own log.
pub(super) fn log_transport_error(error: &reqwest::Error) {
    use std::error::Error as _;
    let mut cause = String::new();
    let mut source = error.source();
    while let Some(inner) = source {
        cause.push_str(": ");
        cause.push_str(&inner.to_string());
        source = inner.source();
    }
    // Without the query: a presigned blob-storage URL carries its signature there.
    let url = error
        .url()
        .map(|u| {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        })
        .unwrap_or_default();
    tracing::info!(url, cause = %cause, "registry connection failed");
}

impl RegistryClient {
    /// The HTTP client for `url` with this registry's caBundle, timeouts and pool: the registry's own for
    /// its distribution API, or, next to a plain-HTTP registry, for any other URL (a token realm,
    /// RegistryX's REST API, where an HTTPS redirect may lead), one that also trusts the system's roots
    /// and follows redirects, built on first use.
    pub fn http_for(&self, url: &str) -> &reqwest::Client {
        let own_api = url
            .strip_prefix(self.base.as_str())
            .is_some_and(|path| path.starts_with('/'));
        if !self.config.insecure || own_api {
            return &self.http;
        }
        self.tls_http.get_or_init(|| {
            // Should adding the system's roots fail (an unreadable trust store), the registry's own
            // client stands in: HTTPS then fails with a clear certificate error, never more trust.
            build_http(
                &self.config,
                self.certificates.clone(),
                true,
                self.redirects.clone(),
            )
            .unwrap_or_else(|_| self.http.clone())
        })
    }

    /// A plain-HTTP registry's redirect that its client stopped at (see `build_http`): an HTTPS
    /// `Location` is read with the client that trusts the system's roots, without the registry's
    /// credentials (as reqwest drops them on a redirect to another host); anything else is returned.
    pub(super) async fn follow_to_https(
        &self,
        step: &Step,
        response: Answer,
        method: Method,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        let target = header(&response, LOCATION.as_str())
            .and_then(|location| response.url().join(&location).ok())
            .filter(|url| url.scheme() == "https");
        let Some(target) = target else {
            return Ok(response);
        };
        drop(response);
        if !self.redirects.allows(&target) {
            return Err(self.redirect_refused(
                step,
                &crate::untrusted::quote(target.host_str().unwrap_or("")),
            ));
        }
        let mut request = self
            .http_for(target.as_str())
            .request(method, target.as_str());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        self.send(step, request, deadline).await
    }

    pub(super) async fn send(
        &self,
        step: &Step,
        request: reqwest::RequestBuilder,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        let timeout = self.remaining(step, deadline)?;
        let timed_out = || self.timed_out(step, timeout, false);
        let started = Instant::now();
        let slot = tokio::time::timeout(timeout, self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(timed_out)?;
        let timeout = timeout.saturating_sub(started.elapsed());
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => Err(timed_out()),
            Ok(Err(error)) if error.is_timeout() => Err(timed_out()),
            Ok(Err(error)) if error.is_redirect() && refused_redirect(&error).is_some() => {
                let host = refused_redirect(&error).unwrap_or_default();
                Err(self.redirect_refused(step, &host))
            }
            Ok(Err(error)) => {
                log_transport_error(&error);
                Err(self.fail(step, ErrorKind::NoRegistry { reading: false }))
            }
            Ok(Ok(response)) => Ok(Answer {
                response,
                _slot: slot,
            }),
        }
    }

    pub(super) async fn read_body(
        &self,
        step: &Step,
        mut response: Answer,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Held), RegistryError> {
        let too_large = || self.fail(step, ErrorKind::TooLarge { limit });
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        // This registry's share and the process's whole budget, held as long as the bytes are, for
        // the body's capacity (what the heap really holds): all of a declared length before reading,
        // so that a reader waits before the bytes arrive; a body without one as it grows.
        let mut held = Held::default();
        let mut charged_kib = 0usize;
        let mut body = Vec::new();
        if let Some(length) = response.content_length() {
            let length = usize::try_from(length).unwrap_or(limit);
            self.charge(step, &mut held, &mut charged_kib, length, deadline)
                .await?;
            body.reserve_exact(length);
        }
        loop {
            let timeout = self.remaining(step, deadline)?;
            let chunk = tokio::time::timeout(timeout, response.chunk())
                .await
                .map_err(|_| self.timed_out(step, timeout, false))?
                .map_err(|e| {
                    log_transport_error(&e);
                    self.fail(step, ErrorKind::NoRegistry { reading: true })
                })?;
            let Some(chunk) = chunk else {
                return Ok((body, held));
            };
            let needed = body.len() + chunk.len();
            if needed > limit {
                return Err(too_large());
            }
            if needed > body.capacity() {
                // Grown as Vec would (doubling), within the limit, and paid for first.
                let capacity = needed.max(body.capacity() * 2).min(limit);
                self.charge(step, &mut held, &mut charged_kib, capacity, deadline)
                    .await?;
                body.reserve_exact(capacity - body.len());
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// Takes permits from this registry's share and the process's budget until `held` pays for
    /// `bytes` (`charged_kib` counts what it pays for already), waiting within the deadline.
    pub(super) async fn charge(
        &self,
        step: &Step,
        held: &mut Held,
        charged_kib: &mut usize,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), RegistryError> {
        let wanted = bytes.div_ceil(1024).saturating_sub(*charged_kib);
        if wanted == 0 {
            return Ok(());
        }
        let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        let timeout = self.remaining(step, deadline)?;
        let waited = tokio::time::timeout(timeout, async {
            let own = self
                .body_budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .ok()?;
            let all = BODY_BUDGET.clone().acquire_many_owned(permits).await.ok()?;
            Some((own, all))
        })
        .await;
        let Ok(Some((own, all))) = waited else {
            return Err(self.timed_out(step, timeout, true));
        };
        held.0.extend([own, all]);
        *charged_kib += wanted;
        Ok(())
    }

    /// An error body, read best-effort and bounded, for messages.
    pub(super) async fn read_small(
        &self,
        step: &Step,
        response: Answer,
        deadline: Instant,
    ) -> Vec<u8> {
        self.read_body(step, response, 16 << 10, deadline)
            .await
            .map(|(body, _)| body)
            .unwrap_or_default()
    }

    /// The response when it is a success; its 404 as `NotFound`, any other status as `Status`.
    pub(super) async fn successful(
        &self,
        step: &Step,
        response: Answer,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        if !response.status().is_success() {
            return Err(self.status_error(step, response, deadline).await);
        }
        Ok(response)
    }

    pub(super) async fn status_error(
        &self,
        step: &Step,
        response: Answer,
        deadline: Instant,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let body = self.read_small(step, response, deadline).await;
        // Only a registry's own error (its JSON `errors`) says anything about the registry: any other
        // answer (a web server's 404 page, a proxy's 502) reads as no registry, in the same words as a
        // closed port, so that an image name cannot be used to probe what listens where.
        if registry_errors(&body).is_none() {
            return self.no_registry(step, &format!("HTTP {status} without a registry error"));
        }
        if status == 404 {
            return self.fail(step, ErrorKind::NotFound);
        }
        let detail = error_message(&body);
        self.fail(step, ErrorKind::Status { status, detail })
    }

    /// A redirect to a host no policy names, never connected to. The host is named (quoted, bounded):
    /// the registry chose it, and the operator needs it to allow a real blob store.
    pub(super) fn redirect_refused(&self, step: &Step, host: &str) -> RegistryError {
        tracing::info!(registry = %self.registry, %step, host, "redirect refused: host not allowed");
        let host = host.to_owned();
        self.fail(step, ErrorKind::RedirectRefused { host })
    }

    /// What is left of the deadline, capped by the per-request timeout.
    pub(super) fn remaining(
        &self,
        step: &Step,
        deadline: Instant,
    ) -> Result<Duration, RegistryError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(step, Duration::ZERO, false));
        }
        Ok(left.min(self.config.request_timeout))
    }

    /// What answered is not a registry: the same error, in the same words, as no answer at all; the
    /// webhook's log has what it was.
    pub(super) fn no_registry(&self, step: &Step, what: &str) -> RegistryError {
        tracing::info!(registry = %self.registry, %step, answer = what, "no registry answered");
        self.fail(step, ErrorKind::NoRegistry { reading: false })
    }

    /// No answer within `waited` (or, `for_memory`, no room in the read budgets within it).
    fn timed_out(&self, step: &Step, waited: Duration, for_memory: bool) -> RegistryError {
        let seconds = waited.as_secs_f64();
        self.fail(
            step,
            ErrorKind::Timeout {
                seconds,
                for_memory,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ImageRef;

    #[test]
    fn error_messages_prefer_the_distribution_error_shape() {
        let body = br#"{"errors":[{"code":"DENIED","message":"policy violation: critical vulnerabilities"}]}"#;
        assert_eq!(
            error_message(body),
            "the registry says \"DENIED policy violation: critical vulnerabilities\""
        );
        assert_eq!(
            error_message(b"<html>\ninternal secrets"),
            "an answer that is not a registry error (not shown)"
        );
        assert_eq!(
            error_message(br#"{"errors":[{"code":"X","message":"a\u0007b\u202e"}]}"#),
            "the registry says \"X ab\""
        );
        assert_eq!(error_message(b""), "empty answer");
    }

    #[test]
    fn redirects_stay_on_the_hosts_the_policy_names() {
        let config = RegistryConfig {
            token_hosts: vec!["auth.example.com".into()],
            redirect_hosts: vec![
                "*.blobs.example".into(),
                "10.0.0.5:9000".into(),
                "Storage.Example.".into(),
            ],
            ..RegistryConfig::default()
        };
        let rule = RedirectRule::new("https://registry.example:5000", &config, false);
        let allows = |url: &str| rule.allows(&reqwest::Url::parse(url).unwrap());
        for allowed in [
            "https://registry.example:5000/v2/x",
            "https://REGISTRY.example.:5000/v2/x",
            "https://auth.example.com/token",
            "https://eu.blobs.example/x?sig=1",
            "http://10.0.0.5:9000/bucket",
            "https://storage.example/x",
        ] {
            assert!(allows(allowed), "{allowed}");
        }
        for refused in [
            "https://registry.example/v2/x",
            "http://registry.example:5001/v2/x",
            "http://127.0.0.1:5000/latest/meta-data/iam/security-credentials/",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost:5000/",
            "https://blobs.example/x",
            "https://evilblobs.example/x",
            "https://blobs.example.evil/x",
            "http://10.0.0.5:9001/bucket",
            "file:///etc/passwd",
        ] {
            assert!(!allows(refused), "{refused}");
        }
        let hub = RedirectRule::new(
            "https://registry-1.docker.io",
            &RegistryConfig::default(),
            true,
        );
        assert!(
            hub.allows(&reqwest::Url::parse("https://production.cloudflare.docker.com/x").unwrap())
        );
    }

    #[test]
    fn a_plain_http_registry_builds_its_tls_client_only_for_urls_beside_its_own_api() {
        crate::tls::install_crypto_provider();
        let image = ImageRef::parse("registry.example:5000/team/app:1").unwrap();
        let plain = RegistryClient::new(
            &image,
            RegistryConfig {
                insecure: true,
                ..RegistryConfig::default()
            },
        )
        .unwrap();
        assert!(std::ptr::eq(
            plain.http_for("http://registry.example:5000/token"),
            &plain.http
        ));
        assert!(plain.tls_http.get().is_none(), "built before any HTTPS URL");
        let tls = plain.http_for("https://auth.example/token");
        assert!(!std::ptr::eq(tls, &plain.http));
        assert!(
            std::ptr::eq(plain.http_for("https://api.example/v2"), tls),
            "built twice"
        );

        let secure = RegistryClient::new(&image, RegistryConfig::default()).unwrap();
        assert!(std::ptr::eq(
            secure.http_for("https://auth.example/token"),
            &secure.http
        ));
        assert!(secure.tls_http.get().is_none());
    }
}
