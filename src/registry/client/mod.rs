//! The distribution-API client: one per registry and access configuration. The distribution API
//! (tags, manifests, blobs, referrers) is here; the transport under it (`transport`: send, deadline,
//! redirects, body caps and budgets, error bodies) and the 401 token flow (`token`) are rooms of their
//! own.

mod token;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;

use super::auth::Credentials;
use super::oci::{
    ACCEPT_MANIFESTS, Descriptor, MediaType, is_oci_index, is_sha256_digest, parse_index,
    sha256_digest,
};
use super::{ErrorKind, ImageRef, RegistryError, Step};
use token::Challenge;
pub use transport::Held;
use transport::{
    Answer, REGISTRY_BODY_BYTES_IN_FLIGHT, RedirectRule, build_http, error_message, header,
    registry_errors,
};

/// How long a registry found without the referrers API is not asked for it again. A registry upgraded in
/// the meantime costs at most this long of not finding signatures attached through that API (refusals,
/// never admissions); within it, every verification saves one request.
pub const REFERRERS_ABSENT_RECHECK: Duration = Duration::from_secs(300);
/// Route-unknown answers in a row that make a registry taken to have no referrers API.
const REFERRERS_ABSENT_AFTER: u32 = 3;

/// How to reach one registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// PEM certificates trusted in addition to the system roots.
    pub ca_bundle: Option<String>,
    pub credentials: Option<Credentials>,
    /// The most one request may take, whatever the deadline leaves.
    pub request_timeout: Duration,
    pub max_manifest_bytes: usize,
    pub max_blob_bytes: usize,
    /// Requests in flight to this registry at once.
    pub max_concurrent_requests: usize,
    /// Hosts besides the registry's own whose token realm may receive the credentials.
    pub token_hosts: Vec<String>,
    /// Hosts besides the registry's own (and its token hosts) that a redirect may lead to: blob storage,
    /// a CDN. `*.example.com` names every host under example.com.
    pub redirect_hosts: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: false,
            ca_bundle: None,
            credentials: None,
            request_timeout: Duration::from_secs(10),
            // distribution refuses manifests over 4 MiB; signature payloads and bundles are a few KiB.
            max_manifest_bytes: 4 << 20,
            // The blobs read are signature material: a simple-signing payload (under 1 KiB from
            // cosign) or a sigstore bundle (a few KiB with its certificate and log entry). 32 of them
            // per image at this cap is 8 MiB, not 128.
            max_blob_bytes: 256 << 10,
            // The widest step of a verification is three reads at once (referrers API, `.sig` tag,
            // fallback tag): 64 lets a Pod of 20 cold images take that step in one round trip (at 16,
            // 20 ms per round trip cost a 20-image Pod 13 round trips instead of 3). Still a bulkhead:
            // a hanging registry holds 64 connections, its own.
            max_concurrent_requests: 64,
            token_hosts: Vec::new(),
            redirect_hosts: Vec::new(),
        }
    }
}

/// The digest a tag resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub digest: String,
    pub media_type: Option<String>,
}

/// Content fetched and checked against its digest.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: String,
    /// The budget these bytes hold while the caller keeps them.
    pub held: Held,
}

pub struct RegistryClient {
    /// The registry as written in references, for messages.
    registry: String,
    /// `scheme://host:port` of the distribution API.
    base: String,
    http: reqwest::Client,
    config: RegistryConfig,
    /// Bearer tokens by scope, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// Set once the registry asked for HTTP Basic.
    basic: AtomicBool,
    permits: Arc<Semaphore>,
    requests: AtomicU64,
    /// Until when the registry is taken to have no referrers API: it answered a referrers request with
    /// a route it does not have.
    referrers_absent_until: Mutex<Option<Instant>>,
    /// Route-unknown answers of the referrers API since its last index.
    referrers_misses: std::sync::atomic::AtomicU32,
    /// For a plain-HTTP registry, the client of the HTTPS URLs it refers to, built when first needed.
    tls_http: std::sync::OnceLock<reqwest::Client>,
    /// The caBundle's certificates, for `tls_http`.
    certificates: Vec<reqwest::Certificate>,
    /// Where redirects may lead.
    redirects: Arc<RedirectRule>,
    /// This registry's share of [`BODY_BUDGET`], in KiB permits.
    body_budget: Arc<Semaphore>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for the registry of `image`.
    pub fn new(image: &ImageRef, config: RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let registry = image.registry.clone();
        let config_error = |detail: String| RegistryError {
            registry: registry.clone(),
            step: Box::new(Step::Configure),
            kind: ErrorKind::Config { detail },
        };
        let certificates = match &config.ca_bundle {
            Some(bundle) => {
                let certificates = reqwest::Certificate::from_pem_bundle(bundle.as_bytes())
                    .map_err(|e| {
                        config_error(format!("caBundle does not parse as PEM certificates: {e}"))
                    })?;
                if certificates.is_empty() {
                    return Err(config_error("caBundle holds no PEM certificate".into()));
                }
                certificates
            }
            None => Vec::new(),
        };
        // A plain-HTTP registry's own requests never verify a certificate: its client does not load the
        // system's trust store (most of a `verify` process's start-up). An HTTPS URL it meets anyway (a
        // token realm, RegistryX's REST API) gets a client that does, built then (`http_for`).
        let scheme = if config.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{}", image.api_host());
        let redirects = Arc::new(RedirectRule::new(
            &base,
            &config,
            registry == crate::registry::DOCKER_HUB,
        ));
        let http = build_http(
            &config,
            certificates.clone(),
            !config.insecure,
            redirects.clone(),
        )
        .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            base,
            redirects,
            body_budget: Arc::new(Semaphore::new(REGISTRY_BODY_BYTES_IN_FLIGHT >> 10)),
            registry,
            http,
            tls_http: std::sync::OnceLock::new(),
            certificates,
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            config,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            referrers_absent_until: Mutex::new(None),
            referrers_misses: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Requests sent so far (including token requests), for metrics and benchmarks.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The digest of `image`: the pinned one without any request, else one HEAD (GET when HEAD does not
    /// give a digest).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        deadline: Instant,
    ) -> Result<Resolved, RegistryError> {
        if let Some(digest) = &image.digest {
            return Ok(Resolved {
                digest: digest.clone(),
                media_type: None,
            });
        }
        let tag = image.reference();
        let step = Step::Resolve {
            repository: image.repository.clone(),
            tag: tag.to_owned(),
        };
        let path = format!("/v2/{}/manifests/{tag}", image.repository);
        let head = self
            .execute(
                &step,
                &image.repository,
                Method::HEAD,
                &path,
                Some(&ACCEPT_MANIFESTS),
                deadline,
            )
            .await;
        // A HEAD that names a digest is the whole answer. Anything else (an error, whose reason is in
        // a body a HEAD does not have; a 404, which only a body tells from a web server's; no digest
        // header) is asked again with GET, whose body `successful` judges: so that an open port that
        // is not a registry reads like a closed one, and a refusal carries the registry's words. Costs
        // one request, on the failure path.
        if let Ok(response) = &head
            && response.status().is_success()
            && let Some(digest) =
                header(response, "docker-content-digest").filter(|d| is_sha256_digest(d))
        {
            let media_type = header(response, CONTENT_TYPE.as_str());
            return Ok(Resolved { digest, media_type });
        }
        match head {
            // Dropped here, slots and all, before the GET takes its own.
            Ok(answer) => drop(answer),
            Err(RegistryError {
                kind: ErrorKind::Denied { .. },
                ..
            }) => {}
            Err(error) => return Err(error),
        }
        let fetched = self
            .fetch_manifest(&step, &image.repository, tag, deadline)
            .await?;
        Ok(Resolved {
            digest: fetched.digest,
            media_type: fetched.media_type,
        })
    }

    /// A manifest by tag or digest, checked against the digest asked for and the one the registry claims.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
        deadline: Instant,
    ) -> Result<Fetched, RegistryError> {
        let step = Step::FetchManifest {
            repository: repository.to_owned(),
            reference: reference.to_owned(),
        };
        self.fetch_manifest(&step, repository, reference, deadline)
            .await
    }

    /// [`RegistryClient::get_manifest`] as a part of `step`.
    async fn fetch_manifest(
        &self,
        step: &Step,
        repository: &str,
        reference: &str,
        deadline: Instant,
    ) -> Result<Fetched, RegistryError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self
            .execute(
                step,
                repository,
                Method::GET,
                &path,
                Some(&ACCEPT_MANIFESTS),
                deadline,
            )
            .await?;
        let response = self.successful(step, response, deadline).await?;
        let media_type = header(&response, CONTENT_TYPE.as_str());
        // Registries label a manifest with its media type (JSON); a web page or plain text is what
        // something other than a registry answers, and reads as no registry at all.
        let manifest_like = media_type.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.contains("json") || t.starts_with("application/vnd.")
        });
        if !manifest_like {
            return Err(self.no_registry(step, "a manifest answer that is not JSON"));
        }
        let claimed = header(&response, "docker-content-digest");
        let (bytes, held) = self
            .read_body(step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        let digest = sha256_digest(&bytes);
        let expected = if is_sha256_digest(reference) {
            Some(reference.to_owned())
        } else {
            claimed.filter(|c| is_sha256_digest(c))
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(self.fail(
                step,
                ErrorKind::DigestMismatch {
                    expected,
                    actual: digest,
                },
            ));
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
            held,
        })
    }

    /// A blob, checked against its digest.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, RegistryError> {
        let step = Step::FetchBlob {
            repository: repository.to_owned(),
            digest: digest.to_owned(),
        };
        if !is_sha256_digest(digest) {
            return Err(self.fail(
                &step,
                ErrorKind::Malformed {
                    detail: "not a sha256 digest".into(),
                },
            ));
        }
        let path = format!("/v2/{repository}/blobs/{digest}");
        let response = self
            .execute(&step, repository, Method::GET, &path, None, deadline)
            .await?;
        let response = self.successful(&step, response, deadline).await?;
        let (bytes, _held) = self
            .read_body(&step, response, self.config.max_blob_bytes, deadline)
            .await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(self.fail(
                &step,
                ErrorKind::DigestMismatch {
                    expected: digest.to_owned(),
                    actual,
                },
            ));
        }
        Ok(bytes)
    }

    /// The referrers of `digest` by the OCI 1.1 referrers API; `None` when the registry does not serve it
    /// (any answer but an image index), so that the caller reads cosign's fallback tag instead.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        let absent_until = *self
            .referrers_absent_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if absent_until.is_some_and(|until| Instant::now() < until) {
            return Ok(None);
        }
        let step = Step::ListReferrers {
            repository: repository.to_owned(),
            digest: digest.to_owned(),
        };
        let path = format!("/v2/{repository}/referrers/{digest}");
        let response = self
            .execute(
                &step,
                repository,
                Method::GET,
                &path,
                Some(MediaType::ImageIndex.as_ref()),
                deadline,
            )
            .await?;
        let status = response.status();
        if matches!(status.as_u16(), 400 | 404 | 405 | 501) {
            // A route the registry does not have (distribution answers a plain-text 404) is remembered;
            // an OCI error in JSON (NAME_UNKNOWN, ...) is about this repository, not the API, and is not.
            // Three in a row, with no index in between, so that one stray answer (an ingress's default
            // backend during a restart) does not hide referrers for the whole registry.
            let json = header(&response, CONTENT_TYPE.as_str()).is_some_and(|t| t.contains("json"));
            if !json
                && self.referrers_misses.fetch_add(1, Ordering::Relaxed) + 1
                    >= REFERRERS_ABSENT_AFTER
            {
                *self
                    .referrers_absent_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + REFERRERS_ABSENT_RECHECK);
            }
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(&step, response, deadline).await);
        }
        let is_index = header(&response, CONTENT_TYPE.as_str()).is_some_and(|t| is_oci_index(&t));
        let (bytes, _held) = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        if !is_index {
            return Ok(None);
        }
        self.referrers_misses.store(0, Ordering::Relaxed);
        let index = parse_index(&bytes)
            .map_err(|detail| self.fail(&step, ErrorKind::Malformed { detail }))?;
        Ok(Some(index.manifests().clone()))
    }

    /// The repository's tags, first page only (`n` of them at most), and whether that page is the
    /// whole list (fewer than `n`, no `Link` to a next page).
    pub async fn list_tags(
        &self,
        repository: &str,
        n: usize,
        deadline: Instant,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let step = Step::ListTags {
            repository: repository.to_owned(),
        };
        let path = format!("/v2/{repository}/tags/list?n={n}");
        let response = self
            .execute(&step, repository, Method::GET, &path, None, deadline)
            .await?;
        let response = self.successful(&step, response, deadline).await?;
        let more = header(&response, "link").is_some();
        let (bytes, _held) = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        let tags: Tags = serde_json::from_slice(&bytes).map_err(|e| {
            let detail = format!("the tag list {}", crate::untrusted::json_error(&e));
            self.fail(&step, ErrorKind::Malformed { detail })
        })?;
        let tags = tags.tags.unwrap_or_default();
        let complete = !more && tags.len() < n;
        Ok((tags, complete))
    }

    /// The descriptors of an image index (platform manifests, or the entries of a fallback tag).
    pub fn index_manifests(
        &self,
        step: &Step,
        fetched: &Fetched,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        parse_index(&fetched.bytes)
            .map(|index| index.manifests().clone())
            .map_err(|detail| self.fail(step, ErrorKind::Malformed { detail }))
    }

    /// Sends one request with the credentials the registry asked for, answering one auth challenge.
    async fn execute(
        &self,
        step: &Step,
        repository: &str,
        method: Method,
        path: &str,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        let scope = format!("repository:{repository}:pull");
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request = self.authorize(request, &scope);
            let response = self.send(step, request, deadline).await?;
            match response.status() {
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    let challenge = header(&response, WWW_AUTHENTICATE.as_str())
                        .and_then(|h| Challenge::parse(&h));
                    // Its request slots go back before the token request takes its own: answers
                    // waiting for slots that they hold would wait for ever.
                    drop(response);
                    self.authenticate(step, challenge, &scope, deadline).await?;
                }
                StatusCode::UNAUTHORIZED => {
                    let detail = error_message(&self.read_small(step, response, deadline).await);
                    return Err(self.fail(step, ErrorKind::Unauthorized { detail }));
                }
                StatusCode::FORBIDDEN => {
                    let body = self.read_small(step, response, deadline).await;
                    // A HEAD's 403 has no body: `resolve` asks again with GET for the message. A GET's
                    // 403 without a registry's own error (empty, a web page, one too large to be an
                    // error) is no registry's refusal.
                    if method != Method::HEAD && registry_errors(&body).is_none() {
                        return Err(self.no_registry(step, "HTTP 403 without a registry error"));
                    }
                    let message = error_message(&body);
                    return Err(self.fail(step, ErrorKind::Denied { message }));
                }
                status if status.is_redirection() && self.config.insecure => {
                    return self
                        .follow_to_https(step, response, method, accept, deadline)
                        .await;
                }
                _ => return Ok(response),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The error of `step` on this registry.
    fn fail(&self, step: &Step, kind: ErrorKind) -> RegistryError {
        RegistryError {
            registry: self.registry.clone(),
            step: Box::new(step.clone()),
            kind,
        }
    }
}
