//! Fakes for what the real tools cannot do: RegistryX's token dance in front of a real registry, and
//! registries that hang, fail, send too much or lie. Each one listens on its own loopback port and runs
//! on its own small tokio runtime, not on the test's: tests call cosign, kubectl and our binary through
//! blocking `std::process` calls, and a fake spawned on a `#[tokio::test]` current-thread runtime would
//! starve while such a call waits for it. Dropping a fake shuts its runtime down, which closes every
//! connection it holds.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use tokio::runtime::Runtime;

use super::registry::{OCI_MANIFEST, sha256};

/// The token realm RegistryX announces. It names the registry's own default address, not the port
/// the proxy listens on, so a client that follows the realm literally goes to the wrong place: the
/// behaviour the guard has to cope with.
pub const REGISTRYX_REALM: &str = "http://localhost:5000/auth/token";
pub const REGISTRYX_SERVICE: &str = "registryx";

/// A listener on a free loopback port served by a dedicated runtime that dies with this value.
struct Server {
    host: String,
    runtime: Option<Runtime>,
}

impl Server {
    /// Binds `127.0.0.1:0` (the kernel picks the port, so there is no race with other tests) and
    /// spawns `serve` with the listener on a fresh runtime.
    fn start<F, Fut>(name: &str, serve: F) -> Server
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Server::start_on(name, "127.0.0.1:0", serve)
    }

    /// As [`Server::start`], on `address`.
    fn start_on<F, Fut>(name: &str, address: &str, serve: F) -> Server
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("fake-{name}"))
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the runtime of fake {name}: {e}"));
        let listener = std::net::TcpListener::bind(address)
            .unwrap_or_else(|e| panic!("fake {name} cannot bind {address}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("bound").port());
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };
        runtime.spawn(serve(listener));
        Server {
            host,
            runtime: Some(runtime),
        }
    }

    /// Serves an axum router on a fresh runtime.
    fn serve_router(name: &str, router: axum::Router) -> Server {
        Server::serve_router_on(name, "127.0.0.1:0", router)
    }

    fn serve_router_on(name: &str, address: &str, router: axum::Router) -> Server {
        let name_owned = name.to_owned();
        Server::start_on(name, address, move |listener| async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("fake {name_owned} stopped serving: {e}");
            }
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `shutdown_background` is the one way to stop a runtime from inside another runtime's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `200 {}` to `GET /v2/`: the registry is up and speaks the distribution API.
fn api_version_ok() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// What a fake that serves only manifests answers to any other path: `/v2/` is up, the rest is
/// unknown. `None` for a manifest path, which the fake answers itself.
fn outside_manifests(path: &str) -> Option<Response> {
    if path == "/v2/" || path == "/v2" {
        Some(api_version_ok())
    } else if !path.contains("/manifests/") {
        Some(registry_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "only manifests here",
        ))
    } else {
        None
    }
}

/// The headers of an OCI manifest answer that names `digest` as its `Docker-Content-Digest`.
fn manifest_headers(digest: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_MANIFEST));
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(digest).expect("ascii digest"),
    );
    headers
}

/// A registry error document as the distribution spec writes it.
fn registry_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message}]}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---------------------------------------------------------------------------------------------------
// RegistryX as its README starts it

/// RegistryX as its README starts it and IMAGE_SIGNING.md uses it: `localhost:5000`, plain HTTP, the
/// OCI API and the REST API on the one port. Clients on loopback skip RegistryX's authentication, so
/// every OCI request (pushes included: cosign signs through it) goes to a real registry unchanged;
/// the REST API's manifest details are faked with a vulnerability scan per digest (completed and clean
/// unless [`RegistryxOnLocalhost::scan`] says otherwise). The upstream registry's own URLs (upload
/// locations) come back through here because the `Host` header is passed on as the client sent it.
pub struct RegistryxOnLocalhost {
    _server: Server,
    scans: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

/// Where IMAGE_SIGNING.md's RegistryX listens.
pub const REGISTRYX_LOCALHOST: &str = "localhost:5000";

impl RegistryxOnLocalhost {
    /// Listens on 127.0.0.1:5000 in front of `upstream` (`host:port` of a plain-HTTP registry). The
    /// port is fixed because the shipped policies name it; a second one in the same process panics.
    pub fn start(upstream: &str) -> RegistryxOnLocalhost {
        let scans = Arc::new(Mutex::new(HashMap::new()));
        let state = Arc::new(HomeState {
            upstream: upstream.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            scans: scans.clone(),
        });
        let router = axum::Router::new()
            .fallback(registryx_at_home)
            .with_state(state);
        RegistryxOnLocalhost {
            _server: Server::serve_router_on("registryx-localhost", "127.0.0.1:5000", router),
            scans,
        }
    }

    /// What the REST API says of `digest`'s vulnerability scan (`{"status","critical","high",...}`).
    pub fn scan(&self, digest: &str, vulnerabilities: serde_json::Value) {
        self.scans
            .lock()
            .expect("scans lock")
            .insert(digest.to_owned(), vulnerabilities);
    }
}

struct HomeState {
    upstream: String,
    client: reqwest::Client,
    scans: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

async fn registryx_at_home(State(state): State<Arc<HomeState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/api/v1/repositories/") {
        return match rest.rsplit_once("/manifests/") {
            Some((name, reference)) => manifest_details(&state, name, reference).await,
            None => registry_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path"),
        };
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 1 << 30).await {
        Ok(body) => body,
        Err(e) => return registry_error(StatusCode::BAD_REQUEST, "BODY", &e.to_string()),
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{target}", state.upstream);
    let mut upstream = state.client.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONNECTION {
            upstream = upstream.header(name, value);
        }
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(e) => {
            return registry_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string());
        }
    };
    let status = response.status();
    let mut headers = response.headers().clone();
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONNECTION);
    let head = parts.method == Method::HEAD;
    let length = headers.get(header::CONTENT_LENGTH).cloned();
    let body = response.bytes().await.unwrap_or_default();
    let mut answer = (status, headers, body).into_response();
    // A HEAD answer keeps the upstream's length; axum would write the empty body's.
    if head && let Some(length) = length {
        answer.headers_mut().insert(header::CONTENT_LENGTH, length);
    }
    answer
}

/// `GET /api/v1/repositories/<name>/manifests/<ref>`, in RegistryX's shape.
async fn manifest_details(state: &HomeState, name: &str, reference: &str) -> Response {
    let url = format!("http://{}/v2/{name}/manifests/{reference}", state.upstream);
    let head = state
        .client
        .head(&url)
        .header(
            header::ACCEPT,
            format!("{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"),
        )
        .send()
        .await;
    let digest = match head {
        Ok(r) if r.status().is_success() => r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        _ => return registry_error(StatusCode::NOT_FOUND, "NOT_FOUND", "manifest unknown"),
    };
    let clean = json!({"status": "completed", "critical": 0, "high": 0, "medium": 0, "low": 0,
                       "high_priority": 0});
    let vulnerabilities = state
        .scans
        .lock()
        .expect("scans lock")
        .get(&digest)
        .cloned()
        .unwrap_or(clean);
    axum::Json(json!({
        "digest": digest,
        "size": 1024,
        "mediaType": OCI_MANIFEST,
        "vulnerabilities": vulnerabilities,
        // RegistryX's flag, which registryx-guard never trusts.
        "isSigned": true,
        "healthScore": 90
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------------
// RegistryX

/// How many requests of each kind the proxy has seen (all of them, answered or refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `GET|HEAD /v2/<name>/manifests/<ref>`
    pub manifest: usize,
    /// `/v2/<name>/blobs/<digest>`
    pub blob: usize,
    /// `/auth/token`
    pub token: usize,
    /// `/v2/<name>/referrers/<digest>`
    pub referrers: usize,
    /// Everything else: `/v2/`, `/v2/_catalog`, tags, uploads, unknown paths.
    pub other: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
    Referrers,
    Other,
}

/// A path under `/v2/` split into repository name and the rest (`manifests/<ref>`, `blobs/<digest>`...).
struct RepositoryPath {
    kind: Kind,
    name: String,
    /// The path after the name, without its leading slash.
    rest: String,
}

impl RepositoryPath {
    /// `None` for `/v2/`, `/v2/_catalog` and paths that name no repository.
    fn parse(path: &str) -> Option<RepositoryPath> {
        let segments: Vec<&str> = path.strip_prefix("/v2/")?.split('/').collect();
        let n = segments.len();
        // Scan from the end: repository names may themselves contain "manifests" or "blobs".
        let (kind, split) = if n >= 3 && segments[n - 2] == "manifests" {
            (Kind::Manifest, n - 2)
        } else if n >= 3 && segments[n - 2] == "referrers" {
            (Kind::Referrers, n - 2)
        } else if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] != "uploads" {
            (Kind::Blob, n - 2)
        } else if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
            (Kind::Other, n - 2)
        } else if let Some(uploads) = segments.iter().rposition(|s| *s == "uploads")
            && uploads >= 2
            && segments[uploads - 1] == "blobs"
        {
            (Kind::Other, uploads - 1)
        } else {
            return None;
        };
        if split == 0 || segments[..split].iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(RepositoryPath {
            kind,
            name: segments[..split].join("/"),
            rest: segments[split..].join("/"),
        })
    }
}

/// The other name under which RegistryX finds a single-component repository: `x` <-> `library/x`.
fn library_alias(name: &str) -> Option<String> {
    match name.strip_prefix("library/") {
        Some(short) if !short.contains('/') => Some(short.to_owned()),
        Some(_) => None,
        None if !name.contains('/') => Some(format!("library/{name}")),
        None => None,
    }
}

#[derive(Default)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    /// repository -> message of its policy violation
    denied: Mutex<HashMap<String, String>>,
    credentials: Mutex<Option<(String, String)>>,
    tokens: Mutex<HashSet<String>>,
    scopes: Mutex<Vec<String>>,
    counts: Mutex<RequestCounts>,
    serial: AtomicU64,
    /// RegistryX's chunked-upload defect: every blob is served as 0 bytes.
    empty_blobs: std::sync::atomic::AtomicBool,
    /// Referrers lists answered as an index without `schemaVersion` and with a descriptor
    /// without `size`: what a sloppy registry might send.
    sloppy_referrers: std::sync::atomic::AtomicBool,
}

impl ProxyState {
    fn count(&self, bump: impl FnOnce(&mut RequestCounts)) {
        bump(&mut self.counts.lock().expect("counts lock"));
    }

    fn has_token(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.tokens
            .lock()
            .expect("tokens lock")
            .contains(token.trim())
    }

    fn denial(&self, name: &str) -> Option<String> {
        let denied = self.denied.lock().expect("denied lock");
        denied
            .get(name)
            .cloned()
            .or_else(|| library_alias(name).and_then(|alias| denied.get(&alias).cloned()))
    }

    /// A fresh token: unguessable enough for a test, and different for every call.
    fn new_token(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let digest = sha256(format!("{}|{nanos}|{serial}", self.upstream).as_bytes());
        let token = format!("rx-{}", &digest["sha256:".len().."sha256:".len() + 40]);
        self.tokens
            .lock()
            .expect("tokens lock")
            .insert(token.clone());
        token
    }
}

/// A fake of RegistryX's authentication in front of a real registry. Manifests are public, everything
/// else needs a bearer token from `/auth/token`, whose realm names `localhost:5000` whatever port the
/// proxy really listens on. It only reads (GET and HEAD); other methods answer 405.
pub struct RegistryxProxy {
    server: Server,
    state: Arc<ProxyState>,
}

impl RegistryxProxy {
    /// Starts the proxy in front of `upstream` (`host:port` of a plain-HTTP registry, e.g.
    /// `Registry::host`).
    pub async fn start(upstream: &str) -> RegistryxProxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            ..ProxyState::default()
        });
        let router = axum::Router::new()
            .fallback(registryx)
            .with_state(state.clone());
        RegistryxProxy {
            server: Server::serve_router("registryx", router),
            state,
        }
    }

    /// Makes `/auth/token` demand HTTP Basic with these credentials (anonymous tokens otherwise).
    pub fn with_credentials(self, user: &str, password: &str) -> RegistryxProxy {
        *self.state.credentials.lock().expect("credentials lock") =
            Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Refuses the manifests of `repository` (and of its `library/` alias) with 403 DENIED and
    /// `policy violation: <message>`.
    pub fn deny(&self, repository: &str, message: &str) {
        self.state
            .denied
            .lock()
            .expect("denied lock")
            .insert(repository.to_owned(), message.to_owned());
    }

    /// Serves every blob as 0 bytes, as RegistryX stores a blob that was uploaded in chunks (what
    /// cosign, crane and docker do): signatures exist, their layers read empty.
    /// Answers every referrers call with a list that does not parse as an OCI index.
    pub fn serve_sloppy_referrers(&self) {
        self.state.sloppy_referrers.store(true, Ordering::SeqCst);
    }

    pub fn serve_empty_blobs(&self) {
        self.state.empty_blobs.store(true, Ordering::SeqCst);
    }

    /// `127.0.0.1:<port>`, as it appears in image references.
    pub fn host(&self) -> String {
        self.server.host.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.host)
    }

    pub fn requests(&self) -> RequestCounts {
        *self.state.counts.lock().expect("counts lock")
    }

    /// The `scope` parameters of every token request, in order (empty string when none was given).
    pub fn token_scopes(&self) -> Vec<String> {
        self.state.scopes.lock().expect("scopes lock").clone()
    }
}

async fn registryx(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/auth/token" {
        state.count(|c| c.token += 1);
        return token(&state, &request);
    }
    let repository = RepositoryPath::parse(&path);
    match repository.as_ref().map(|r| r.kind) {
        Some(Kind::Manifest) => state.count(|c| c.manifest += 1),
        Some(Kind::Blob) => state.count(|c| c.blob += 1),
        Some(Kind::Referrers) => state.count(|c| c.referrers += 1),
        Some(Kind::Other) | None => state.count(|c| c.other += 1),
    }
    if path == "/v2/" || path == "/v2" {
        return if state.has_token(request.headers()) {
            api_version_ok()
        } else {
            unauthorized()
        };
    }
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return registry_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "registryx serves pulls only",
        );
    }
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if path == "/v2/_catalog" {
        if !state.has_token(request.headers()) {
            return unauthorized();
        }
        return forward(&state, &method, request.headers(), "/v2/_catalog", &query).await;
    }
    let Some(repository) = repository else {
        return registry_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path");
    };
    if repository.kind == Kind::Manifest {
        if let Some(message) = state.denial(&repository.name) {
            return registry_error(
                StatusCode::FORBIDDEN,
                "DENIED",
                &format!("policy violation: {message}"),
            );
        }
    } else if !state.has_token(request.headers()) {
        return unauthorized();
    } else if repository.kind == Kind::Blob && state.empty_blobs.load(Ordering::SeqCst) {
        return (StatusCode::OK, [(header::CONTENT_LENGTH, "0")], "").into_response();
    } else if repository.kind == Kind::Referrers && state.sloppy_referrers.load(Ordering::SeqCst) {
        let sloppy = serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": format!("sha256:{}", "0".repeat(64))}],
        });
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.index.v1+json",
            )],
            sloppy.to_string(),
        )
            .into_response();
    }
    let upstream_path = format!("/v2/{}/{}", repository.name, repository.rest);
    let response = forward(&state, &method, request.headers(), &upstream_path, &query).await;
    if response.status() != StatusCode::NOT_FOUND {
        return response;
    }
    match library_alias(&repository.name) {
        Some(alias) => {
            let alias_path = format!("/v2/{alias}/{}", repository.rest);
            forward(&state, &method, request.headers(), &alias_path, &query).await
        }
        None => response,
    }
}

fn unauthorized() -> Response {
    let mut response = registry_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    let challenge = format!("Bearer realm=\"{REGISTRYX_REALM}\",service=\"{REGISTRYX_SERVICE}\"");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("ascii challenge"),
    );
    response
}

fn token(state: &ProxyState, request: &Request) -> Response {
    let params = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map(|Query(params)| params)
        .unwrap_or_default();
    state
        .scopes
        .lock()
        .expect("scopes lock")
        .push(params.get("scope").cloned().unwrap_or_default());
    let required = state.credentials.lock().expect("credentials lock").clone();
    if let Some((user, password)) = required {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            let mut response = registry_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "invalid credentials",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"registryx\""),
            );
            return response;
        }
    }
    let token = state.new_token();
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 time");
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": 3600,
        "issued_at": issued_at,
    }))
    .into_response()
}

/// Sends the request to the upstream registry and copies back what a registry client looks at.
async fn forward(
    state: &ProxyState,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: &str,
) -> Response {
    let url = format!("http://{}{path}{query}", state.upstream);
    let mut upstream = state.client.request(method.clone(), &url);
    if let Some(accept) = headers.get(header::ACCEPT) {
        upstream = upstream.header(header::ACCEPT, accept);
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(e) => {
            return registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("upstream {url}: {e}"),
            );
        }
    };
    let status = response.status();
    let mut copied = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::HeaderName::from_static("docker-content-digest"),
        header::LOCATION,
    ] {
        if let Some(value) = response.headers().get(&name) {
            copied.insert(name, value.clone());
        }
    }
    // A HEAD answer has no body to measure, so its length is copied; a GET's length comes from its body.
    if *method == Method::HEAD
        && let Some(length) = response.headers().get(header::CONTENT_LENGTH)
    {
        copied.insert(header::CONTENT_LENGTH, length.clone());
    }
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => {
            return registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("upstream body of {url}: {e}"),
            );
        }
    };
    let mut answer = Response::new(Body::from(body));
    *answer.status_mut() = status;
    *answer.headers_mut() = copied;
    answer
}

// ---------------------------------------------------------------------------------------------------
// Misbehaving registries

/// Accepts TCP connections and never answers on them: what a registry behind a stuck load balancer
/// looks like to a client without a timeout.
pub struct HangingRegistry {
    server: Server,
    connections: Arc<AtomicUsize>,
}

impl HangingRegistry {
    pub async fn start() -> HangingRegistry {
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let server = Server::start("hanging", move |listener| async move {
            // Held, never read nor written, and closed only when the runtime shuts down.
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        HangingRegistry {
            server,
            connections,
        }
    }

    pub fn host(&self) -> String {
        self.server.host.clone()
    }

    /// How many connections were accepted (and left hanging) so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Answers every request, `/v2/` included, with one status (500, 503, 429...) and a registry error.
pub struct FailingRegistry(Scripted);

impl FailingRegistry {
    pub async fn start(status: u16) -> FailingRegistry {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|e| panic!("FailingRegistry: bad status {status}: {e}"));
        FailingRegistry(Scripted::start("failing", move |_, _| {
            registry_error(status, "UNKNOWN", "the fake registry fails on purpose")
        }))
    }

    pub fn host(&self) -> String {
        self.0.host()
    }

    /// How many requests it has answered: shows whether a client retried.
    pub fn requests(&self) -> usize {
        self.0.requests()
    }
}

/// The digest the oversized registry claims for every manifest.
pub const OVERSIZED_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

const OVERSIZED_PREFIX: &[u8] =
    b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"padding\":\"";
const OVERSIZED_SUFFIX: &[u8] = b"\"}";
const OVERSIZED_CHUNK: u64 = 64 * 1024;

/// Bytes `offset..offset+len` of a JSON-looking manifest of `total` bytes: a prefix, `a`s, a suffix.
fn oversized_chunk(offset: u64, len: u64, total: u64) -> Bytes {
    let mut chunk = vec![b'a'; len as usize];
    let end = offset + len;
    // Copies the part of `piece` (placed at `start` in the whole body) that falls into this chunk.
    let mut overlay = |piece: &[u8], start: u64| {
        let from = start.max(offset);
        let to = (start + piece.len() as u64).min(end);
        if from < to {
            chunk[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&piece[(from - start) as usize..(to - start) as usize]);
        }
    };
    overlay(
        OVERSIZED_SUFFIX,
        total.saturating_sub(OVERSIZED_SUFFIX.len() as u64),
    );
    overlay(OVERSIZED_PREFIX, 0);
    Bytes::from(chunk)
}

#[derive(Default)]
struct OversizedState {
    size: u64,
    declare_length: bool,
    bytes_sent: AtomicU64,
}

/// A registry whose manifests are `size` bytes of JSON-looking padding, streamed in 64 KiB chunks
/// (never held in memory at once), under the digest [`OVERSIZED_DIGEST`]. Shows whether a client caps
/// what it reads.
pub struct OversizedRegistry {
    server: Server,
    state: Arc<OversizedState>,
}

impl OversizedRegistry {
    /// Manifest GETs declare `Content-Length: size`.
    pub async fn start(size: u64) -> OversizedRegistry {
        Self::started(size, true)
    }

    /// Manifest GETs are chunked, without a `Content-Length`, so only counting the bytes can stop a
    /// client (HEAD still declares the size).
    pub async fn start_chunked(size: u64) -> OversizedRegistry {
        Self::started(size, false)
    }

    fn started(size: u64, declare_length: bool) -> OversizedRegistry {
        let state = Arc::new(OversizedState {
            size,
            declare_length,
            ..OversizedState::default()
        });
        let router = axum::Router::new()
            .fallback(oversized)
            .with_state(state.clone());
        OversizedRegistry {
            server: Server::serve_router("oversized", router),
            state,
        }
    }

    pub fn host(&self) -> String {
        self.server.host.clone()
    }

    pub fn size(&self) -> u64 {
        self.state.size
    }

    /// How many body bytes the server has produced so far: kernel buffers aside, what clients read.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }
}

async fn oversized(State(state): State<Arc<OversizedState>>, request: Request) -> Response {
    if let Some(response) = outside_manifests(request.uri().path()) {
        return response;
    }
    let mut headers = manifest_headers(OVERSIZED_DIGEST);
    let length = HeaderValue::from(state.size);
    let body = match *request.method() {
        Method::HEAD => {
            headers.insert(header::CONTENT_LENGTH, length);
            Body::empty()
        }
        Method::GET => {
            if state.declare_length {
                headers.insert(header::CONTENT_LENGTH, length);
            }
            let stream_state = state.clone();
            let chunks = futures::stream::unfold(0u64, move |offset| {
                let state = stream_state.clone();
                async move {
                    if offset >= state.size {
                        return None;
                    }
                    let len = OVERSIZED_CHUNK.min(state.size - offset);
                    state.bytes_sent.fetch_add(len, Ordering::SeqCst);
                    let chunk = oversized_chunk(offset, len, state.size);
                    Some((Ok::<_, std::io::Error>(chunk), offset + len))
                }
            });
            Body::from_stream(chunks)
        }
        _ => {
            return registry_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "read only");
        }
    };
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response
}

/// A registry that serves a well-formed OCI manifest under a `Docker-Content-Digest` (and for a
/// digest reference) that is not the digest of the bytes it sends.
pub struct LyingRegistry {
    server: Server,
    manifest: Arc<Vec<u8>>,
    claimed: String,
}

impl LyingRegistry {
    pub async fn start() -> LyingRegistry {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
            "layers": [],
        }))
        .expect("manifest json");
        let claimed = sha256(b"not the manifest that is served");
        let manifest = Arc::new(manifest);
        let (served, digest) = (manifest.clone(), claimed.clone());
        let router = axum::Router::new().fallback(move |request: Request| {
            let (served, digest) = (served.clone(), digest.clone());
            async move { lying(&served, &digest, &request) }
        });
        LyingRegistry {
            server: Server::serve_router("lying", router),
            manifest,
            claimed,
        }
    }

    pub fn host(&self) -> String {
        self.server.host.clone()
    }

    /// The digest announced in `Docker-Content-Digest`.
    pub fn claimed_digest(&self) -> String {
        self.claimed.clone()
    }

    /// The digest of the bytes really served.
    pub fn actual_digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn manifest(&self) -> Vec<u8> {
        self.manifest.as_ref().clone()
    }
}

fn lying(manifest: &[u8], claimed: &str, request: &Request) -> Response {
    if let Some(response) = outside_manifests(request.uri().path()) {
        return response;
    }
    let mut headers = manifest_headers(claimed);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(manifest.len()));
    let body = if request.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from(manifest.to_vec())
    };
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response
}

/// A plain-HTTP front that answers every request with `307` to the same path on `https://<target>`, as
/// a registry whose storage hands out HTTPS URLs (S3, GCS presigned blobs) does. Counts what it saw.
pub struct RedirectingRegistry(Scripted);

impl RedirectingRegistry {
    pub fn start(target: &str) -> RedirectingRegistry {
        let target = target.to_owned();
        RedirectingRegistry(Scripted::start("redirecting", move |_, path| {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("https://{target}{path}"))],
            )
                .into_response()
        }))
    }

    pub fn host(&self) -> String {
        self.0.host()
    }

    pub fn requests(&self) -> usize {
        self.0.requests()
    }
}

// ---------------------------------------------------------------------------------------------------
// Hostile registries and the internal services they point at

/// Any HTTP server: every request is answered by `answer(method, path)`, and counted. The registries
/// that lie in the second ring's tests (a megabyte JSON string for a signature, a redirect into the
/// cluster, a web server that is no registry) and the internal services they would reach.
pub struct Scripted {
    server: Server,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    pub fn start<F>(name: &str, answer: F) -> Scripted
    where
        F: Fn(&Method, &str) -> Response + Clone + Send + Sync + 'static,
    {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let router = axum::Router::new().fallback(move |request: Request| {
            let (counter, answer) = (counter.clone(), answer.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                answer(request.method(), &path)
            }
        });
        Scripted {
            server: Server::serve_router(name, router),
            requests,
        }
    }

    pub fn host(&self) -> String {
        self.server.host.clone()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Accepts each connection and closes it at once, before a byte: a port that is open but speaks no
/// HTTP.
pub struct Slamming {
    server: Server,
}

impl Slamming {
    pub fn start() -> Slamming {
        let server = Server::start("slamming", |listener| async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Slamming { server }
    }

    pub fn host(&self) -> String {
        self.server.host.clone()
    }
}

/// A loopback address with no listener: bound once to learn a free port, then closed.
pub fn closed_port_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let host = format!("127.0.0.1:{}", listener.local_addr().expect("bound").port());
    drop(listener);
    host
}
