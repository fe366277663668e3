//! The distribution-API client: one per registry and access configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::auth::{Challenge, Credentials};
use super::{ImageRef, RegistryError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

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
            max_blob_bytes: 4 << 20,
            // The widest step of a verification is three reads at once (referrers API, `.sig` tag,
            // fallback tag): 64 lets a Pod of 20 cold images take that step in one round trip (at 16,
            // 20 ms per round trip cost a 20-image Pod 13 round trips instead of 3). Still a bulkhead:
            // a hanging registry holds 64 connections, its own.
            max_concurrent_requests: 64,
            token_hosts: Vec::new(),
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
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: String,
}

/// An OCI content descriptor.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
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
    permits: Semaphore,
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
}

/// A reqwest client for one registry: trusting the caBundle's `certificates`, and the system's roots
/// unless `system_roots` is false (then only the caBundle's).
fn build_http(
    config: &RegistryConfig,
    certificates: Vec<reqwest::Certificate>,
    system_roots: bool,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(config.max_concurrent_requests)
        .user_agent(concat!("registryx-guard/", env!("CARGO_PKG_VERSION")));
    let builder = if system_roots {
        builder.tls_certs_merge(certificates)
    } else {
        // Without the system's roots, a redirect to HTTPS (blob storage's presigned URLs) is not
        // followed here but handed back to `execute`, which follows it with the client that has them.
        builder
            .tls_certs_only(certificates)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() == "https" {
                    attempt.stop()
                } else if attempt.previous().len() >= 10 {
                    attempt.error("more than 10 redirects")
                } else {
                    attempt.follow()
                }
            }))
    };
    builder.build()
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
        let config_error = |detail: String| RegistryError::Config {
            registry: registry.clone(),
            detail,
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
        let http = build_http(&config, certificates.clone(), !config.insecure)
            .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))?;
        let scheme = if config.insecure { "http" } else { "https" };
        Ok(RegistryClient {
            base: format!("{scheme}://{}", image.api_host()),
            registry,
            http,
            tls_http: std::sync::OnceLock::new(),
            certificates,
            permits: Semaphore::new(config.max_concurrent_requests.max(1)),
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
            build_http(&self.config, self.certificates.clone(), true)
                .unwrap_or_else(|_| self.http.clone())
        })
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
        let step = format!("resolve {}:{tag}", image.repository);
        let path = format!("/v2/{}/manifests/{tag}", image.repository);
        let head = self
            .execute(
                &step,
                &image.repository,
                Method::HEAD,
                &path,
                Some(ACCEPT_MANIFESTS),
                deadline,
            )
            .await;
        let response = match head {
            // A HEAD answer has no body, and a refusal's reason is in the body: ask again with GET.
            Err(RegistryError::Denied { .. }) => {
                let fetched = self.get_manifest(&image.repository, tag, deadline).await?;
                return Ok(Resolved {
                    digest: fetched.digest,
                    media_type: fetched.media_type,
                });
            }
            other => other?,
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                step,
            });
        }
        let media_type = header(&response, CONTENT_TYPE.as_str());
        if status.is_success()
            && let Some(digest) =
                header(&response, "docker-content-digest").filter(|d| is_sha256_digest(d))
        {
            return Ok(Resolved { digest, media_type });
        }
        if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED {
            let fetched = self.get_manifest(&image.repository, tag, deadline).await?;
            return Ok(Resolved {
                digest: fetched.digest,
                media_type: fetched.media_type,
            });
        }
        Err(self.status_error(step, response, deadline).await)
    }

    /// A manifest by tag or digest, checked against the digest asked for and the one the registry claims.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
        deadline: Instant,
    ) -> Result<Fetched, RegistryError> {
        let step = format!("fetch manifest {repository}:{reference}");
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self
            .execute(
                &step,
                repository,
                Method::GET,
                &path,
                Some(ACCEPT_MANIFESTS),
                deadline,
            )
            .await?;
        let response = self.successful(&step, response, deadline).await?;
        let media_type = header(&response, CONTENT_TYPE.as_str());
        let claimed = header(&response, "docker-content-digest");
        let bytes = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
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
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                step,
                expected,
                actual: digest,
            });
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// A blob, checked against its digest.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, RegistryError> {
        let step = format!("fetch blob {repository}@{digest}");
        if !is_sha256_digest(digest) {
            return Err(RegistryError::Malformed {
                registry: self.registry.clone(),
                step,
                detail: "not a sha256 digest".into(),
            });
        }
        let path = format!("/v2/{repository}/blobs/{digest}");
        let response = self
            .execute(&step, repository, Method::GET, &path, None, deadline)
            .await?;
        let response = self.successful(&step, response, deadline).await?;
        let bytes = self
            .read_body(&step, response, self.config.max_blob_bytes, deadline)
            .await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                step,
                expected: digest.to_owned(),
                actual,
            });
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
        let step = format!("list referrers of {repository}@{digest}");
        let path = format!("/v2/{repository}/referrers/{digest}");
        let response = self
            .execute(
                &step,
                repository,
                Method::GET,
                &path,
                Some(OCI_INDEX),
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
            return Err(self.status_error(step, response, deadline).await);
        }
        let is_index =
            header(&response, CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with(OCI_INDEX));
        let bytes = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        if !is_index {
            return Ok(None);
        }
        self.referrers_misses.store(0, Ordering::Relaxed);
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
                registry: self.registry.clone(),
                step,
                detail: format!("not an image index: {e}"),
            })?;
        Ok(Some(index.manifests))
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
        let step = format!("list tags of {repository}");
        let path = format!("/v2/{repository}/tags/list?n={n}");
        let response = self
            .execute(&step, repository, Method::GET, &path, None, deadline)
            .await?;
        let response = self.successful(&step, response, deadline).await?;
        let more = header(&response, "link").is_some();
        let bytes = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        let tags: Tags = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
            registry: self.registry.clone(),
            step,
            detail: format!("not a tag list: {e}"),
        })?;
        let tags = tags.tags.unwrap_or_default();
        let complete = !more && tags.len() < n;
        Ok((tags, complete))
    }

    /// The descriptors of an image index (platform manifests, or the entries of a fallback tag).
    pub fn index_manifests(
        &self,
        step: &str,
        fetched: &Fetched,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        serde_json::from_slice::<Index>(&fetched.bytes)
            .map(|index| index.manifests)
            .map_err(|e| RegistryError::Malformed {
                registry: self.registry.clone(),
                step: step.to_owned(),
                detail: format!("not an image index: {e}"),
            })
    }

    /// Sends one request with the credentials the registry asked for, answering one auth challenge.
    async fn execute(
        &self,
        step: &str,
        repository: &str,
        method: Method,
        path: &str,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<Response, RegistryError> {
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
                    self.authenticate(step, challenge, &scope, deadline).await?;
                }
                StatusCode::UNAUTHORIZED => {
                    let detail = error_message(&self.read_small(step, response, deadline).await);
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        step: step.to_owned(),
                        detail,
                    });
                }
                StatusCode::FORBIDDEN => {
                    let message = error_message(&self.read_small(step, response, deadline).await);
                    return Err(RegistryError::Denied {
                        registry: self.registry.clone(),
                        step: step.to_owned(),
                        message,
                    });
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

    /// A plain-HTTP registry's redirect that its client stopped at (see `build_http`): an HTTPS
    /// `Location` is read with the client that trusts the system's roots, without the registry's
    /// credentials (as reqwest drops them on a redirect to another host); anything else is returned.
    async fn follow_to_https(
        &self,
        step: &str,
        response: Response,
        method: Method,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<Response, RegistryError> {
        let target = header(&response, LOCATION.as_str())
            .and_then(|location| response.url().join(&location).ok())
            .filter(|url| url.scheme() == "https");
        let Some(target) = target else {
            return Ok(response);
        };
        let mut request = self
            .http_for(target.as_str())
            .request(method, target.as_str());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        self.send(step, request, deadline).await
    }

    fn authorize(&self, request: reqwest::RequestBuilder, scope: &str) -> reqwest::RequestBuilder {
        let token = {
            let tokens = self
                .tokens
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tokens
                .get(scope)
                .filter(|(_, expiry)| *expiry > Instant::now())
                .map(|(token, _)| token.clone())
        };
        match (token, &self.config.credentials) {
            (Some(token), _) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            (None, Some(credentials)) if self.basic.load(Ordering::Relaxed) => {
                request.basic_auth(&credentials.username, Some(&credentials.password))
            }
            _ => request,
        }
    }

    /// Answers a 401: remembers that Basic is wanted, or runs the token flow for `scope`.
    async fn authenticate(
        &self,
        step: &str,
        challenge: Option<Challenge>,
        scope: &str,
        deadline: Instant,
    ) -> Result<(), RegistryError> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            registry: self.registry.clone(),
            step: step.to_owned(),
            detail,
        };
        match challenge {
            None => Err(unauthorized(
                "the registry answered 401 without a usable WWW-Authenticate challenge".into(),
            )),
            Some(Challenge::Basic) => {
                if self.config.credentials.is_none() {
                    return Err(unauthorized(
                        "the registry wants a username and password and none is configured".into(),
                    ));
                }
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let scope_wanted = challenge_scope.unwrap_or_else(|| scope.to_owned());
                // Where the token is asked for is decided before any request: credentials go only to
                // the registry's own host or to a host the policy names.
                let realm = self.token_endpoint(step, &realm)?;
                let token_step = format!("{step}: get a token from {realm}");
                let response = self
                    .request_token(
                        &token_step,
                        &realm,
                        service.as_deref(),
                        &scope_wanted,
                        deadline,
                    )
                    .await?;
                let status = response.status();
                let body = self
                    .read_body(&token_step, response, 64 << 10, deadline)
                    .await?;
                if !status.is_success() {
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        step: token_step,
                        detail: format!(
                            "token endpoint answered HTTP {}: {}",
                            status.as_u16(),
                            error_message(&body)
                        ),
                    });
                }
                #[derive(Deserialize)]
                struct TokenAnswer {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let answer: TokenAnswer =
                    serde_json::from_slice(&body).map_err(|e| RegistryError::Malformed {
                        registry: self.registry.clone(),
                        step: token_step.clone(),
                        detail: format!("token answer is not JSON: {e}"),
                    })?;
                let token = answer
                    .token
                    .or(answer.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RegistryError::Malformed {
                        registry: self.registry.clone(),
                        step: token_step,
                        detail: "token answer holds no token".into(),
                    })?;
                // Renew a little early so that a token never expires between check and use.
                // Bounded: a registry that claims a token lives for ever must not overflow the clock.
                let lifetime =
                    Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(10, 86_400) - 5);
                let mut tokens = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                tokens.insert(scope.to_owned(), (token.clone(), Instant::now() + lifetime));
                if scope_wanted != scope {
                    tokens.insert(scope_wanted, (token, Instant::now() + lifetime));
                }
                Ok(())
            }
        }
    }

    async fn request_token(
        &self,
        step: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        deadline: Instant,
    ) -> Result<Response, RegistryError> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http_for(realm).get(realm).query(&query);
        if let Some(credentials) = &self.config.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = self.send(step, request, deadline).await?;
        if response.status().is_redirection() && self.config.insecure {
            return self
                .follow_to_https(step, response, Method::GET, None, deadline)
                .await;
        }
        Ok(response)
    }

    /// The token endpoint to ask: a loopback realm of a registry reached elsewhere is RegistryX's
    /// `http://localhost:5000/auth/token` quirk and means the registry's own host (whatever listens on
    /// this process's localhost must never see the credentials); a realm on the registry's own host, or
    /// on a host the policy names in `tokenHosts` (Docker Hub's `auth.docker.io` for `docker.io`), is
    /// used as it is; any other realm is refused.
    fn token_endpoint(&self, step: &str, realm: &str) -> Result<String, RegistryError> {
        if let Some(mapped) = self.rewrite_loopback_realm(realm) {
            return Ok(mapped);
        }
        let refused = |detail: String| RegistryError::Unauthorized {
            registry: self.registry.clone(),
            step: step.to_owned(),
            detail,
        };
        let url = reqwest::Url::parse(realm)
            .map_err(|e| refused(format!("the token realm {realm:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(refused(format!("the token realm {realm:?} is not http(s)")));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let base = reqwest::Url::parse(&self.base).ok();
        // The registry's own host, over the scheme it is reached with: Basic credentials must not go
        // in clear text to a port of that host the registry never named.
        let own = base.as_ref().is_some_and(|b| {
            b.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&host))
                && b.scheme() == url.scheme()
        });
        let hub = self.registry == crate::registry::DOCKER_HUB && host == "auth.docker.io";
        let named = self.config.token_hosts.contains(&host);
        if own || hub || named {
            Ok(realm.to_owned())
        } else {
            Err(refused(format!(
                "the registry sends its token requests to {host}, another host than its own; add \
                 {host} to spec.registry.tokenHosts of the policy if it is the registry's token service"
            )))
        }
    }

    /// The realm moved onto this registry's own scheme and host, when it names another loopback address.
    fn rewrite_loopback_realm(&self, realm: &str) -> Option<String> {
        let url = reqwest::Url::parse(realm).ok()?;
        let host = url.host_str()?;
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || host == "[::1]";
        let base = reqwest::Url::parse(&self.base).ok()?;
        let same = base.host_str() == Some(host)
            && base.port_or_known_default() == url.port_or_known_default();
        if !loopback || same {
            return None;
        }
        let mut local = base;
        local.set_path(url.path());
        local.set_query(url.query());
        Some(local.to_string())
    }

    async fn send(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
        deadline: Instant,
    ) -> Result<Response, RegistryError> {
        let timeout = self.remaining(step, deadline)?;
        let timed_out = || RegistryError::Timeout {
            registry: self.registry.clone(),
            step: step.to_owned(),
            seconds: timeout.as_secs_f64(),
        };
        let started = Instant::now();
        let _permit = tokio::time::timeout(timeout, self.permits.acquire())
            .await
            .map_err(|_| timed_out())?;
        let timeout = timeout.saturating_sub(started.elapsed());
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => Err(timed_out()),
            Ok(Err(error)) if error.is_timeout() => Err(timed_out()),
            Ok(Err(error)) => Err(RegistryError::Transport {
                registry: self.registry.clone(),
                step: step.to_owned(),
                detail: describe_transport_error(&error),
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// What is left of the deadline, capped by the per-request timeout.
    fn remaining(&self, step: &str, deadline: Instant) -> Result<Duration, RegistryError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RegistryError::Timeout {
                registry: self.registry.clone(),
                step: step.to_owned(),
                seconds: 0.0,
            });
        }
        Ok(left.min(self.config.request_timeout))
    }

    async fn read_body(
        &self,
        step: &str,
        mut response: Response,
        limit: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            registry: self.registry.clone(),
            step: step.to_owned(),
            limit,
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            let timeout = self.remaining(step, deadline)?;
            let chunk = tokio::time::timeout(timeout, response.chunk())
                .await
                .map_err(|_| RegistryError::Timeout {
                    registry: self.registry.clone(),
                    step: step.to_owned(),
                    seconds: timeout.as_secs_f64(),
                })?
                .map_err(|e| RegistryError::Transport {
                    registry: self.registry.clone(),
                    step: step.to_owned(),
                    detail: format!("reading the answer: {}", describe_transport_error(&e)),
                })?;
            let Some(chunk) = chunk else { return Ok(body) };
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// An error body, read best-effort and bounded, for messages.
    async fn read_small(&self, step: &str, response: Response, deadline: Instant) -> Vec<u8> {
        self.read_body(step, response, 16 << 10, deadline)
            .await
            .unwrap_or_default()
    }

    /// The response when it is a success; its 404 as `NotFound`, any other status as `Status`.
    async fn successful(
        &self,
        step: &str,
        response: Response,
        deadline: Instant,
    ) -> Result<Response, RegistryError> {
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                step: step.to_owned(),
            });
        }
        if !response.status().is_success() {
            return Err(self.status_error(step.to_owned(), response, deadline).await);
        }
        Ok(response)
    }

    async fn status_error(
        &self,
        step: String,
        response: Response,
        deadline: Instant,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let body = self.read_small(&step, response, deadline).await;
        RegistryError::Status {
            registry: self.registry.clone(),
            step,
            status,
            detail: error_message(&body),
        }
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn is_sha256_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The message of a distribution-API error body (`{"errors":[{"code","message"}]}`), each message
/// shortened and stripped of control characters. Any other body is never quoted: a refusal is shown to
/// whoever created the pod, and an image naming an internal service must not make its answers readable.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let clean = |text: &str, limit: usize| -> String {
        text.chars()
            .filter(|c| !c.is_control())
            .take(limit)
            .collect()
    };
    if let Ok(errors) = serde_json::from_slice::<Errors>(body)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .take(3)
            .map(|e| {
                let (code, message) = (clean(&e.code, 40), clean(&e.message, 200));
                if code.is_empty() {
                    message
                } else {
                    format!("{code} {message}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    if body.is_empty() {
        return "empty answer".into();
    }
    format!(
        "an answer that is not a registry error ({} bytes, not shown)",
        body.len()
    )
}

/// The same words whatever the cause (a closed port, a reset, a TLS failure, something that is not a
/// registry): a refusal must not tell a caller which internal ports are open. The cause goes to the
/// webhook's own log.
fn describe_transport_error(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut cause = String::new();
    let mut source = error.source();
    while let Some(inner) = source {
        cause.push_str(": ");
        cause.push_str(&inner.to_string());
        source = inner.source();
    }
    tracing::info!(url = error.url().map(|u| u.as_str()).unwrap_or(""), cause = %cause, "registry connection failed");
    "cannot connect, or the connection failed (the webhook's log has the cause)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn error_messages_prefer_the_distribution_error_shape() {
        let body = br#"{"errors":[{"code":"DENIED","message":"policy violation: critical vulnerabilities"}]}"#;
        assert_eq!(
            error_message(body),
            "DENIED policy violation: critical vulnerabilities"
        );
        assert_eq!(
            error_message(b"<html>\ninternal secrets"),
            "an answer that is not a registry error (23 bytes, not shown)"
        );
        assert_eq!(
            error_message(br#"{"errors":[{"code":"X","message":"a\u0007b"}]}"#),
            "X ab"
        );
        assert_eq!(error_message(b""), "empty answer");
    }

    #[test]
    fn loopback_realm_is_moved_onto_the_registry() {
        let image = ImageRef::parse("127.0.0.1:41234/demo/app:v1").unwrap();
        let client = RegistryClient::new(
            &image,
            RegistryConfig {
                insecure: true,
                ..RegistryConfig::default()
            },
        )
        .unwrap();
        assert_eq!(
            client
                .rewrite_loopback_realm("http://localhost:5000/auth/token")
                .as_deref(),
            Some("http://127.0.0.1:41234/auth/token")
        );
        assert_eq!(
            client.rewrite_loopback_realm("http://127.0.0.1:41234/auth/token"),
            None
        );
        assert_eq!(
            client.rewrite_loopback_realm("https://auth.example.com/token"),
            None
        );
    }
}
