//! The distribution-API client: one per registry and access configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Bytes of registry answers held at once, over every registry: being read, and, for manifests, until
/// the caller drops them. What a crowd of hostile registries answering megabytes can make the process
/// hold; with the per-registry share below, one registry never takes more than a sixth of it. Two
/// registries answering 3.5 MB to 96 images at once peak under 190 MiB resident (tests/containment.rs),
/// under the chart's 256 MiB.
/// Readers past either bound wait (within their deadline) instead of growing the heap.
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
struct Answer {
    response: Response,
    _slot: tokio::sync::OwnedSemaphorePermit,
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
    fn new(base: &str, config: &RegistryConfig, docker_hub: bool) -> RedirectRule {
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
fn build_http(
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
            Err(RegistryError::Denied { .. }) => {}
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
        let step = format!("fetch manifest {repository}:{reference}");
        self.fetch_manifest(&step, repository, reference, deadline)
            .await
    }

    /// [`RegistryClient::get_manifest`] as a part of `step`.
    async fn fetch_manifest(
        &self,
        step: &str,
        repository: &str,
        reference: &str,
        deadline: Instant,
    ) -> Result<Fetched, RegistryError> {
        let step = step.to_owned();
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
        // Registries label a manifest with its media type (JSON); a web page or plain text is what
        // something other than a registry answers, and reads as no registry at all.
        let manifest_like = media_type.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.contains("json") || t.starts_with("application/vnd.")
        });
        if !manifest_like {
            return Err(self.no_registry(&step, "a manifest answer that is not JSON"));
        }
        let claimed = header(&response, "docker-content-digest");
        let (bytes, held) = self
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
        let (bytes, _held) = self
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
        let (bytes, _held) = self
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
                detail: format!("the image index {}", crate::untrusted::json_error(&e)),
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
        let (bytes, _held) = self
            .read_body(&step, response, self.config.max_manifest_bytes, deadline)
            .await?;
        let tags: Tags = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
            registry: self.registry.clone(),
            step,
            detail: format!("the tag list {}", crate::untrusted::json_error(&e)),
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
                detail: format!("the image index {}", crate::untrusted::json_error(&e)),
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
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        step: step.to_owned(),
                        detail,
                    });
                }
                StatusCode::FORBIDDEN => {
                    let body = self.read_small(step, response, deadline).await;
                    // A HEAD's 403 has no body: `resolve` asks again with GET for the message. A GET's
                    // 403 without a registry's own error (empty, a web page, one too large to be an
                    // error) is no registry's refusal.
                    if method != Method::HEAD && registry_errors(&body).is_none() {
                        return Err(self.no_registry(step, "HTTP 403 without a registry error"));
                    }
                    return Err(RegistryError::Denied {
                        registry: self.registry.clone(),
                        step: step.to_owned(),
                        message: error_message(&body),
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
                let (body, _held) = self
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
                        detail: format!("the token answer {}", crate::untrusted::json_error(&e)),
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
    ) -> Result<Answer, RegistryError> {
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
        let url = reqwest::Url::parse(realm).map_err(|e| {
            refused(format!(
                "the token realm {} is not a URL: {e}",
                crate::untrusted::quote(realm)
            ))
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(refused(format!(
                "the token realm {} is not http(s)",
                crate::untrusted::quote(realm)
            )));
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
            let host = crate::untrusted::quote(&host);
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
    ) -> Result<Answer, RegistryError> {
        let timeout = self.remaining(step, deadline)?;
        let timed_out = || RegistryError::Timeout {
            registry: self.registry.clone(),
            step: step.to_owned(),
            seconds: timeout.as_secs_f64(),
        };
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
            Ok(Err(error)) => Err(RegistryError::Transport {
                registry: self.registry.clone(),
                step: step.to_owned(),
                detail: describe_transport_error(&error),
            }),
            Ok(Ok(response)) => Ok(Answer {
                response,
                _slot: slot,
            }),
        }
    }

    /// A redirect to a host no policy names, never connected to. The host is named (quoted, bounded):
    /// the registry chose it, and the operator needs it to allow a real blob store.
    fn redirect_refused(&self, step: &str, host: &str) -> RegistryError {
        tracing::info!(registry = %self.registry, step, host, "redirect refused: host not allowed");
        RegistryError::Transport {
            registry: self.registry.clone(),
            step: step.to_owned(),
            detail: format!(
                "the registry redirected to {host}, a host no policy names, and registryx-guard does \
                 not follow it; if that host serves this registry's content (blob storage, a CDN), add \
                 it to spec.registry.redirectHosts of the policy"
            ),
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
        mut response: Answer,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Held), RegistryError> {
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
    async fn charge(
        &self,
        step: &str,
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
            return Err(RegistryError::Timeout {
                registry: self.registry.clone(),
                step: format!("{step} (waiting for memory to read the answer into)"),
                seconds: timeout.as_secs_f64(),
            });
        };
        held.0.extend([own, all]);
        *charged_kib += wanted;
        Ok(())
    }

    /// An error body, read best-effort and bounded, for messages.
    async fn read_small(&self, step: &str, response: Answer, deadline: Instant) -> Vec<u8> {
        self.read_body(step, response, 16 << 10, deadline)
            .await
            .map(|(body, _)| body)
            .unwrap_or_default()
    }

    /// The response when it is a success; its 404 as `NotFound`, any other status as `Status`.
    async fn successful(
        &self,
        step: &str,
        response: Answer,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        if !response.status().is_success() {
            return Err(self.status_error(step.to_owned(), response, deadline).await);
        }
        Ok(response)
    }

    async fn status_error(
        &self,
        step: String,
        response: Answer,
        deadline: Instant,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let body = self.read_small(&step, response, deadline).await;
        // Only a registry's own error (its JSON `errors`) says anything about the registry: any other
        // answer (a web server's 404 page, a proxy's 502) reads as no registry, in the same words as a
        // closed port, so that an image name cannot be used to probe what listens where.
        if registry_errors(&body).is_none() {
            return self.no_registry(&step, &format!("HTTP {status} without a registry error"));
        }
        if status == 404 {
            return RegistryError::NotFound {
                registry: self.registry.clone(),
                step,
            };
        }
        RegistryError::Status {
            registry: self.registry.clone(),
            step,
            status,
            detail: error_message(&body),
        }
    }

    /// What answered is not a registry: the same error, in the same words, as no answer at all; the
    /// webhook's log has what it was.
    fn no_registry(&self, step: &str, what: &str) -> RegistryError {
        tracing::info!(registry = %self.registry, step, answer = what, "no registry answered");
        RegistryError::Transport {
            registry: self.registry.clone(),
            step: step.to_owned(),
            detail: NO_REGISTRY.to_owned(),
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

/// The one text of every failure to reach a registry: a closed port, a reset, a TLS failure, and an
/// answer from something that is not a registry all read the same.
const NO_REGISTRY: &str = "no registry answered: cannot connect, the connection failed, or what \
     answered is not a registry (the webhook's log has the cause)";

/// A distribution-API error body (`{"errors":[{"code","message"}]}` with at least one entry), if `body`
/// is one.
fn registry_errors(body: &[u8]) -> Option<Vec<ErrorEntry>> {
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
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The message of a distribution-API error body (`{"errors":[{"code","message"}]}`), each message
/// shortened and stripped of control characters. Any other body is never quoted: a refusal is shown to
/// whoever created the pod, and an image naming an internal service must not make its answers readable.
fn error_message(body: &[u8]) -> String {
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
    NO_REGISTRY.to_owned()
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
