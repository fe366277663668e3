//! TLS for the admission port: the serving certificate and its rotation without a restart, the rustls
//! server configuration, and the HTTPS accept loop that serves an axum router over HTTP/1.1 and HTTP/2.
//!
//! The certificate comes from files (in a cluster, a Secret volume that cert-manager or an operator
//! rotates). [`CertificateReloader`] is the rustls certificate resolver: every handshake asks it for the
//! current certificate, so installing a new one affects only connections made afterwards, while
//! established connections and requests in flight carry on untouched. Cached TLS sessions are forgotten
//! on rotation so that clients cannot resume their way past the new certificate. A rotation that cannot
//! be loaded (half-written file, key and certificate from different generations) keeps the last good
//! certificate.
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio_rustls::TlsAcceptor;

use super::keepalive::{self, CountingIo, Draining, HeadTimer};
use crate::Error;

/// How long a client may take to complete the TLS handshake. Without a bound, clients that open a
/// connection and stall would each hold a task and a socket forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const H2_PREFACE_BYTES: u64 = 24;
/// The longest a stop waits for open connections to finish: a client that never lets its connection
/// end must not keep the process from exiting (the chart's grace period is shorter anyway).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// HTTP/2 pings on idle connections, so that peers that vanished without a FIN are noticed.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Open connections at once. The API server keeps a handful per replica; the rest is headroom, and the
/// cap (with the body budget of the webhook) bounds what a flood of connections can hold. When it is
/// reached the connections are shared fairly by address (see `Connections`).
pub const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams in flight on one connection (the API server multiplexes reviews over few connections).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Open connections from one address: the API server needs a handful; one pod holding idle connections
/// must not take the whole [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_PEER: usize = 128;

/// The connection caps of the admission port: [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_PEER`] by
/// default, lower in tests (`serve --max-connections`, hidden) so that a crowd needs fewer sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at once.
    pub total: usize,
    /// Open connections from one address at once.
    pub per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: MAX_CONNECTIONS,
            per_peer: MAX_CONNECTIONS_PER_PEER,
        }
    }
}

/// The address a request came from, as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::IpAddr);

/// How long a new connection may stay silent before its first byte (the start of the ClientHello)
/// while the server is crowded (half its connection cap or more in use): the API server writes it right
/// after connecting, so a connection that has sent nothing for this long is not a client starting TLS
/// but one holding a slot. Uncrowded, a silent connection has the whole [`HANDSHAKE_TIMEOUT`].
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a connection is, for choosing which one to close when a lighter peer needs its place: the
/// cheapest loss first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Accepted, TLS not complete: nothing of value lost, and a stalled handshake looks like this.
    Handshaking,
    /// TLS done, no request in flight.
    Idle,
    /// A request in flight on it.
    Busy,
}

/// What the accept loop and one connection's task share: the connection's stage, and the signal
/// that it was evicted.
#[derive(Default)]
struct ConnectionState {
    handshaken: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    evicted: tokio::sync::Notify,
}

impl ConnectionState {
    fn stage(&self) -> Stage {
        use std::sync::atomic::Ordering;
        if !self.handshaken.load(Ordering::Relaxed) {
            Stage::Handshaking
        } else if self.in_flight.load(Ordering::Relaxed) == 0 {
            Stage::Idle
        } else {
            Stage::Busy
        }
    }
}

/// The open connections, by peer address, with fair share when full.
///
/// Below [`ConnectionLimits::total`] every connection gets in (up to [`ConnectionLimits::per_peer`] per
/// address). At the cap, a connection from an address that holds none, or at least two fewer than the
/// heaviest other address, takes the place of one of that address's connections (a still-handshaking
/// one first, then an idle one, a busy one last; the oldest of a kind): however many connections a
/// crowd opens, an address with few connections (the API server) is never the one left out. Otherwise
/// the newcomer is refused, so a crowd that fills the cap evenly stops churning.
#[derive(Clone)]
struct Connections {
    table: Arc<Mutex<ConnectionTable>>,
    limits: ConnectionLimits,
}

#[derive(Default)]
struct ConnectionTable {
    open: usize,
    next_id: u64,
    /// Each address's connections, oldest first.
    peers: std::collections::HashMap<std::net::IpAddr, Vec<(u64, Arc<ConnectionState>)>>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The address holds [`ConnectionLimits::per_peer`] already.
    PeerFull,
    /// The cap is reached and no other address holds two more connections than this one (or any,
    /// when this one holds none).
    Full,
}

/// A connection's place in [`Connections`], given back when dropped (unless it was evicted).
struct ConnectionSlot {
    table: Arc<Mutex<ConnectionTable>>,
    ip: std::net::IpAddr,
    id: u64,
    state: Arc<ConnectionState>,
}

/// Who was evicted to make room, for the log.
struct Evicted {
    ip: std::net::IpAddr,
    stage: Stage,
}

impl Connections {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            table: Arc::default(),
            limits,
        }
    }

    /// Half the cap or more in use: silent connections get [`FIRST_BYTE_TIMEOUT`], not more.
    fn crowded(&self) -> bool {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.open * 2 >= self.limits.total
    }

    fn admit(&self, ip: std::net::IpAddr) -> Result<(ConnectionSlot, Option<Evicted>), Refused> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = table.peers.get(&ip).map_or(0, Vec::len);
        if mine >= self.limits.per_peer {
            return Err(Refused::PeerFull);
        }
        let mut evicted = None;
        if table.open >= self.limits.total {
            let heaviest = table
                .peers
                .iter()
                .filter(|(peer, _)| **peer != ip)
                .max_by_key(|(_, connections)| connections.len())
                .map(|(peer, connections)| (*peer, connections.len()));
            // Two more than the newcomer (or any, for a newcomer holding none): between n and n + 1
            // an eviction would only swap who holds which, and a crowd would churn its connections
            // (and the replica's CPU on their handshakes) endlessly.
            let lighter = |held: usize| held >= mine + 2 || (mine == 0 && held > 0);
            let Some((victim_ip, held)) = heaviest.filter(|(_, held)| lighter(*held)) else {
                return Err(Refused::Full);
            };
            let connections = table
                .peers
                .get_mut(&victim_ip)
                .expect("the heaviest peer is in the table");
            // `min_by_key` keeps the first of equals: the oldest of the cheapest stage.
            let (index, stage) = connections
                .iter()
                .enumerate()
                .map(|(index, (_, state))| (index, state.stage()))
                .min_by_key(|(_, stage)| *stage)
                .expect("a peer in the table holds a connection");
            let (_, state) = connections.remove(index);
            if held == 1 {
                table.peers.remove(&victim_ip);
            }
            table.open -= 1;
            // Stored if the task is not waiting yet: it sees it at its first await.
            state.evicted.notify_one();
            evicted = Some(Evicted {
                ip: victim_ip,
                stage,
            });
        }
        let id = table.next_id;
        table.next_id += 1;
        table.open += 1;
        let state = Arc::new(ConnectionState::default());
        table
            .peers
            .entry(ip)
            .or_default()
            .push((id, Arc::clone(&state)));
        Ok((
            ConnectionSlot {
                table: Arc::clone(&self.table),
                ip,
                id,
                state,
            },
            evicted,
        ))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(connections) = table.peers.get_mut(&self.ip) else {
            return;
        };
        // Absent when evicted: its place was given to the newcomer then.
        let Some(index) = connections.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        connections.remove(index);
        if connections.is_empty() {
            table.peers.remove(&self.ip);
        }
        table.open -= 1;
    }
}

/// Counts a connection's requests in flight (its [`Stage::Busy`]) around the service.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    state: Arc<ConnectionState>,
}

/// One request in flight on a connection, for as long as it lives.
struct InFlight(Arc<ConnectionState>);

impl InFlight {
    fn enter(state: &Arc<ConnectionState>) -> Self {
        state
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, request: R) -> Self::Future {
        let in_flight = InFlight::enter(&self.state);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// Back-off after an accept error that is not about one connection (e.g. out of file descriptors),
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Attempts at reading the certificate and the key from the same generation of files before giving the
/// pair to the parser anyway (the parser then reports a mismatch and the next poll tries again).
const CONSISTENT_READ_ATTEMPTS: usize = 3;

/// TLS sessions kept for resumption (rustls's default size).
const SESSION_CACHE_SIZE: usize = 256;

/// The serving certificate, reloaded from its files when they change.
///
/// It is the [`ResolvesServerCert`] of the [`rustls::ServerConfig`] built by [`server_config`]: each new
/// handshake gets whatever certificate is current at that moment.
pub struct CertificateReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    sessions: Arc<SessionCache>,
    /// What is installed, to tell a real change from a touch. Held for the whole of a reload so that
    /// two concurrent reloads cannot install generations out of order.
    installed: Mutex<Fingerprint>,
}

impl CertificateReloader {
    /// Loads the PEM certificate chain (end-entity certificate first) and the PEM private key (PKCS#8,
    /// SEC1 or PKCS#1). Fails, naming the file, when a file is missing or holds no certificate or key,
    /// or when the key does not belong to the certificate.
    ///
    /// The key is loaded with the process-default rustls provider (installed at start by
    /// [`crate::tls::install_crypto_provider`]), or aws-lc-rs when none is installed yet.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, Error> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let provider = CryptoProvider::get_default().cloned().unwrap_or_else(|| {
            // aws-lc-rs is the one provider this crate compiles in; see crate::tls.
            Arc::new(rustls::crypto::aws_lc_rs::default_provider())
        });
        let files = read_pair(&cert_path, &key_path)?;
        let key = certified_key(&files, &cert_path, &key_path, &provider)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            sessions: Arc::new(SessionCache::new()),
            installed: Mutex::new(files.fingerprint),
            cert_path,
            key_path,
            provider,
        }))
    }

    /// Reloads the files if they changed since the last successful load: `Ok(true)` when a new
    /// certificate is now served, `Ok(false)` when nothing changed (or the files were rewritten with
    /// the same content).
    ///
    /// On error the previous certificate stays in service and the next call tries again; the error is
    /// for the caller to log.
    pub fn reload(&self) -> Result<bool, Error> {
        let mut installed = self
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // `metadata` follows symlinks, so a Secret volume update (an atomic swap of the `..data` link)
        // shows up as different files even when size and modification time happen to match.
        let stamps = [stamp(&self.cert_path)?, stamp(&self.key_path)?];
        if stamps == installed.stamps {
            return Ok(false);
        }
        let files = read_pair(&self.cert_path, &self.key_path)?;
        if files.fingerprint.digest == installed.digest {
            // Same bytes in new files (a re-projected Secret, a `touch`): nothing to install.
            installed.stamps = files.fingerprint.stamps;
            return Ok(false);
        }
        let key = certified_key(&files, &self.cert_path, &self.key_path, &self.provider)?;
        self.current.store(Arc::new(key));
        self.sessions.forget_all();
        *installed = files.fingerprint;
        Ok(true)
    }

    /// The certificate new handshakes get right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Polls the files every `every` and installs a rotated certificate: info on rotation, warn when
    /// the files do not load (once per distinct error, as a broken file would otherwise warn every
    /// poll). The task ends when the reloader is no longer used by anyone else.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let reloader = Arc::downgrade(self);
        tokio::spawn(watch(reloader, every))
    }
}

async fn watch(reloader: Weak<CertificateReloader>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and the files were just loaded.
    ticks.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        ticks.tick().await;
        let Some(current) = reloader.upgrade() else {
            return;
        };
        let cert_path = current.cert_path.clone();
        // File I/O and key parsing are blocking; they are quick, but not for the async workers to do.
        let outcome = match tokio::task::spawn_blocking(move || current.reload()).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%error, "the certificate reload task failed; trying again later");
                continue;
            }
        };
        match outcome {
            Ok(true) => {
                last_error = None;
                tracing::info!(cert = %cert_path.display(), "serving a rotated TLS certificate");
            }
            Ok(false) => last_error = None,
            Err(error) => {
                let message = error.to_string();
                if last_error.as_deref() == Some(message.as_str()) {
                    tracing::debug!(%error, "TLS certificate still does not load; keeping the previous one");
                } else {
                    tracing::warn!(%error, "TLS certificate does not load; keeping the previous one");
                    last_error = Some(message);
                }
            }
        }
    }
}

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for CertificateReloader {
    // By hand: the private key must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateReloader")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// The rustls configuration of the admission port: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`, no
/// client certificates (the API server authenticates us, not the other way round), and the
/// certificate from `reloader`.
///
/// Fails only if the crypto provider supports neither protocol version, which aws-lc-rs never does.
pub fn server_config(
    reloader: Arc<CertificateReloader>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let reloader_sessions = Arc::clone(&reloader.sessions);
    let mut config = rustls::ServerConfig::builder_with_provider(reloader.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| Error::Tls(format!("TLS 1.2 and 1.3 are not available: {error}")))?
        .with_no_client_auth()
        .with_cert_resolver(reloader);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = reloader_sessions;
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then stops accepting and waits for
/// the open connections to finish what they are doing (idle HTTP/1.1 connections close at once, HTTP/2
/// connections get a GOAWAY and finish their streams). Once `draining` is set, before `shutdown`,
/// HTTP/1.1 connections close after their next response (see [`keepalive`]).
///
/// One client cannot stop the loop: a failed or slow (over [`HANDSHAKE_TIMEOUT`]) handshake and a broken
/// connection are logged at debug and dropped. Accept errors are retried, so the result is `Ok` once
/// the connections drained.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    draining: Draining,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_https_with(
        listener,
        config,
        router,
        draining,
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_https`] with connection caps other than the defaults.
pub async fn serve_https_with(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    draining: Draining,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let router = router.layer(axum::middleware::from_fn_with_state(
        draining,
        keepalive::close_when_draining,
    ));
    let connections = Connections::new(limits);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(%error, "connection lost before it was accepted");
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot accept connections; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        // Beyond the caps a connection is closed at once, unless a heavier peer gives up one of its
        // own (see `Connections`): the kernel's backlog must not fill with connections that wait for
        // a slot while the API server's own connections queue behind them.
        let slot = match connections.admit(peer.ip()) {
            Ok((slot, evicted)) => {
                if let Some(evicted) = evicted {
                    tracing::debug!(%peer, evicted = %evicted.ip, stage = ?evicted.stage, "at the connection cap: closed a connection of the address holding the most");
                }
                slot
            }
            Err(refused) => {
                // Debug, not warn: a crowd makes thousands of these a second, and the log is not
                // where it should cost us.
                tracing::debug!(%peer, ?refused, total = limits.total, per_peer = limits.per_peer, "connection refused");
                drop(tcp);
                continue;
            }
        };
        // Admission reviews are small request/response exchanges: do not let Nagle hold back the tail.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        // The peer's address travels with each request: the webhook shares its body budget per peer.
        let service = Tracked {
            inner: TowerToHyperService::new(
                router.clone().layer(axum::Extension(PeerAddr(peer.ip()))),
            ),
            state: Arc::clone(&slot.state),
        };
        // Taken before the handshake so that shutdown also waits for connections still handshaking.
        let watcher = graceful.watcher();
        let connections = connections.clone();
        tokio::spawn(async move {
            let state = Arc::clone(&slot.state);
            let _slot = slot;
            tokio::select! {
                () = serve_connection(tcp, peer, acceptor, service, watcher, &state, &connections) => {}
                () = state.evicted.notified() => {
                    tracing::debug!(%peer, "connection closed to make room for a lighter peer");
                }
            }
        });
    }

    // Stop accepting first, so that clients are refused rather than left waiting in the backlog.
    drop(listener);
    tracing::debug!(
        connections = graceful.count(),
        "waiting for open connections to finish"
    );
    if tokio::time::timeout(SHUTDOWN_LIMIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = SHUTDOWN_LIMIT.as_secs(),
            "connections still open after the shutdown limit; stopping anyway"
        );
    }
    Ok(())
}

/// One accepted connection: the first byte within [`FIRST_BYTE_TIMEOUT`] when crowded, the TLS
/// handshake within [`HANDSHAKE_TIMEOUT`] of the accept, then HTTP/1.1 or HTTP/2 as ALPN agreed until either side ends it.
async fn serve_connection<S>(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    state: &ConnectionState,
    connections: &Connections,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // A connection that never sends a byte holds a slot for nothing (the API server's ClientHello
    // follows its connect at once): while the server is crowded it is closed after
    // FIRST_BYTE_TIMEOUT, checked again every FIRST_BYTE_TIMEOUT until the handshake deadline.
    loop {
        let step = (tokio::time::Instant::now() + FIRST_BYTE_TIMEOUT).min(handshake_deadline);
        match tokio::time::timeout_at(step, tcp.peek(&mut [0u8; 1])).await {
            Ok(Ok(read)) if read > 0 => break,
            Ok(Ok(_)) | Ok(Err(_)) => return,
            Err(_elapsed) if step >= handshake_deadline => {
                tracing::debug!(%peer, "TLS handshake timed out before its first byte");
                return;
            }
            Err(_elapsed) if connections.crowded() => {
                tracing::debug!(%peer, "crowded: nothing received within the first-byte timeout");
                return;
            }
            Err(_elapsed) => {}
        }
    }
    let tls = match tokio::time::timeout_at(handshake_deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "TLS handshake failed");
            return;
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    state
        .handshaken
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The protocol is the one ALPN agreed (no ALPN: HTTP/1.1), not one sniffed from the first
    // bytes: sniffing reads ahead of the HTTP/1.1 head timer and waits without a bound.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let (io, received) = CountingIo::new(tls);
    let builder = connection_builder(h2, received.head_timer(keepalive::IDLE_TIMEOUT));
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    let ended = if h2 {
        // An HTTP/2 client sends its 24-byte preface right after the handshake; one that has not
        // within the head timeout is cut off like a stalled HTTP/1.1 head (hyper's HTTP/2 handshake
        // has no timer of its own).
        tokio::select! {
            ended = connection => ended,
            () = received.short_of(H2_PREFACE_BYTES, keepalive::HEAD_TIMEOUT) => {
                tracing::debug!(%peer, "HTTP/2 preface timed out");
                return;
            }
        }
    } else {
        connection.await
    };
    if let Err(error) = ended {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// The protocol settings of one connection. Built per connection because the HTTP/1.1 head timer is
/// the connection's own (it reads the connection's byte count).
fn connection_builder(h2: bool, timer: HeadTimer) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .http1()
        .keep_alive(true)
        .timer(timer)
        .header_read_timeout(keepalive::HEAD_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// Errors about one connection that died in the backlog, which say nothing about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The server's TLS session cache (TLS 1.2 session IDs, TLS 1.3 stateful PSKs), emptied whenever a new
/// certificate is installed. A resumed session skips the certificate, so without this a client that
/// connected before a rotation would go on resuming sessions authenticated by the old certificate, and
/// a rotation made to retire a certificate or a CA would not take effect for it.
///
/// A handshake that completes with the old certificate while the new one is being installed can still
/// store its session after the reset; that window is one handshake wide.
#[derive(Debug)]
struct SessionCache {
    sessions: ArcSwap<ServerSessionMemoryCache>,
}

impl SessionCache {
    fn new() -> Self {
        Self {
            sessions: ArcSwap::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)),
        }
    }

    fn forget_all(&self) {
        self.sessions
            .store(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE));
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.sessions.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Identity of one file as seen through its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Device and inode: a file renamed over the old one, or a swapped symlink, is a different file
    /// even when the modification time is too coarse to tell.
    #[cfg(unix)]
    file_id: (u64, u64),
}

fn stamp(path: &Path) -> Result<FileStamp, Error> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(FileStamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        #[cfg(unix)]
        file_id: {
            use std::os::unix::fs::MetadataExt as _;
            (metadata.dev(), metadata.ino())
        },
    })
}

/// The certificate and key files of one load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    stamps: [FileStamp; 2],
    digest: [u8; 32],
}

struct Files {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    fingerprint: Fingerprint,
}

/// Reads both files, retrying when either changed while being read, so that a rotation in progress
/// does not pair the old certificate with the new key. The bytes are read once and both hashed and
/// parsed, so what is installed is exactly what was fingerprinted.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<Files, Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    let mut attempt = 1;
    loop {
        let before = [stamp(cert_path)?, stamp(key_path)?];
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let after = [stamp(cert_path)?, stamp(key_path)?];
        if before == after || attempt == CONSISTENT_READ_ATTEMPTS {
            let mut hasher = Sha256::new();
            // The length keeps "cert|key" boundaries apart: moving bytes from one file to the other
            // must not hash the same.
            hasher.update((cert_pem.len() as u64).to_be_bytes());
            hasher.update(&cert_pem);
            hasher.update(&key_pem);
            return Ok(Files {
                cert_pem,
                key_pem,
                // `before`: if the files changed under us, the next reload sees new stamps and reads again.
                fingerprint: Fingerprint {
                    stamps: before,
                    digest: hasher.finalize().into(),
                },
            });
        }
        attempt += 1;
    }
}

fn certified_key(
    files: &Files,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            Error::Tls(format!(
                "{}: not a valid PEM certificate chain: {error}",
                cert_path.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate found",
            cert_path.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|error| match error {
        pem::Error::NoItemsFound => Error::Tls(format!(
            "{}: no PEM private key (PKCS#8, SEC1 or PKCS#1) found",
            key_path.display()
        )),
        error => Error::Tls(format!(
            "{}: not a valid PEM private key: {error}",
            key_path.display()
        )),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| {
            Error::Tls(format!(
                "{}: unsupported private key: {error}",
                key_path.display()
            ))
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot report its public key; rustls's own loader accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::Tls(format!(
                "the private key in {} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            )))
        }
        Err(error) => Err(Error::Tls(format!(
            "{}: the certificate cannot be used: {error}",
            cert_path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    struct Pair {
        cert_pem: String,
        key_pem: String,
    }

    fn self_signed() -> Pair {
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("generate a test certificate");
        Pair {
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        }
    }

    /// Writes a file the way a Secret volume update does: a new file renamed over the old path.
    fn replace(path: &Path, contents: &str) {
        let staging = path.with_extension("staging");
        std::fs::write(&staging, contents).expect("write the staging file");
        std::fs::rename(&staging, path).expect("rename over the old file");
    }

    fn files(dir: &tempfile::TempDir, pair: &Pair) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        replace(&cert, &pair.cert_pem);
        replace(&key, &pair.key_pem);
        (cert, key)
    }

    fn load_error(cert: &Path, key: &Path) -> String {
        crate::tls::install_crypto_provider();
        match CertificateReloader::load(cert, key) {
            Ok(_) => panic!(
                "loading {} and {} should fail",
                cert.display(),
                key.display()
            ),
            Err(error) => error.to_string(),
        }
    }

    fn ip(last: u8) -> std::net::IpAddr {
        std::net::IpAddr::from([127, 0, 0, last])
    }

    fn count(connections: &Connections, peer: std::net::IpAddr) -> usize {
        let table = connections.table.lock().unwrap();
        table.peers.get(&peer).map_or(0, Vec::len)
    }

    #[test]
    fn at_the_cap_a_lighter_peer_takes_a_place_of_the_heaviest_handshaking_first() {
        let connections = Connections::new(ConnectionLimits {
            total: 5,
            per_peer: 4,
        });
        let heavy: Vec<_> = (0..4)
            .map(|_| connections.admit(ip(2)).expect("below the cap").0)
            .collect();
        let _other = connections.admit(ip(3)).expect("below the cap");
        // The heavy peer's two oldest are busy, the next idle, the newest still handshaking.
        for busy in &heavy[..2] {
            busy.state.handshaken.store(true, Ordering::Relaxed);
            busy.state.in_flight.store(1, Ordering::Relaxed);
        }
        heavy[2].state.handshaken.store(true, Ordering::Relaxed);

        let (_api, evicted) = connections
            .admit(ip(1))
            .expect("a peer holding none gets in");
        let evicted = evicted.expect("someone made room");
        assert_eq!((evicted.ip, evicted.stage), (ip(2), Stage::Handshaking));
        assert_eq!(count(&connections, ip(2)), 3);
        // Then the idle one (1 + 2 <= 3), and a busy one only when nothing else is left.
        let (_api2, evicted) = connections
            .admit(ip(1))
            .expect("two fewer than the heaviest");
        assert_eq!(evicted.map(|e| e.stage), Some(Stage::Idle));
        // .1 and .2 hold 2 each now, .3 holds 1: a third from .1 is not two fewer than anyone's.
        assert_eq!(connections.admit(ip(1)).err(), Some(Refused::Full));
        assert_eq!(connections.admit(ip(3)).err(), Some(Refused::Full));
        // Dropping an evicted connection's slot gives back nothing twice.
        drop(heavy);
        assert_eq!(count(&connections, ip(2)), 0);
        assert_eq!(
            connections.table.lock().unwrap().open,
            3,
            ".1's two and .3's one"
        );
        assert!(connections.admit(ip(4)).is_ok());
    }

    #[test]
    fn equals_are_refused_at_the_cap_and_the_per_peer_cap_holds() {
        let connections = Connections::new(ConnectionLimits {
            total: 2,
            per_peer: 1,
        });
        let _a = connections.admit(ip(2)).unwrap();
        assert_eq!(connections.admit(ip(2)).err(), Some(Refused::PeerFull));
        let _b = connections.admit(ip(3)).unwrap();
        // Full, and .4 would be lighter (0 < 1): it takes the place of one of them.
        let (_c, evicted) = connections.admit(ip(4)).unwrap();
        assert!(evicted.is_some());
        // The evicted peer holds 0 now and gets back in the same way; that churn is the crowd's own.
        let evicted_ip = evicted.unwrap().ip;
        assert_eq!(count(&connections, evicted_ip), 0);
        let (_d, again) = connections.admit(evicted_ip).unwrap();
        assert!(again.is_some());
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told_even_before_it_waits() {
        let connections = Connections::new(ConnectionLimits {
            total: 1,
            per_peer: 1,
        });
        let (victim, _) = connections.admit(ip(2)).unwrap();
        let _newcomer = connections.admit(ip(1)).unwrap();
        tokio::time::timeout(Duration::from_secs(1), victim.state.evicted.notified())
            .await
            .expect("the eviction is stored for the connection's task");
    }

    #[test]
    fn loads_a_matching_pair() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed();
        let (cert, key) = files(&dir, &pair);
        let reloader = CertificateReloader::load(&cert, &key).expect("load the pair");
        assert_eq!(reloader.current().cert.len(), 1);
        assert!(!reloader.reload().expect("reload unchanged files"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = files(&dir, &self_signed());
        let missing = dir.path().join("absent.crt");
        let message = load_error(&missing, &key);
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        let missing = dir.path().join("absent.key");
        let message = load_error(&cert, &missing);
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed();
        let (cert, key) = files(&dir, &pair);
        replace(&cert, "not a certificate\n");
        let message = load_error(&cert, &key);
        assert!(
            message.contains(&format!("{}: no PEM certificate found", cert.display())),
            "{message}"
        );
        // A key where the certificate should be holds no certificate either.
        replace(&cert, &pair.key_pem);
        let message = load_error(&cert, &key);
        assert!(message.contains("no PEM certificate found"), "{message}");
    }

    #[test]
    fn a_file_without_a_key_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed();
        let (cert, key) = files(&dir, &pair);
        replace(&key, &pair.cert_pem);
        let message = load_error(&cert, &key);
        assert!(
            message.contains(&format!("{}: no PEM private key", key.display())),
            "{message}"
        );
    }

    #[test]
    fn a_truncated_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed();
        let (cert, key) = files(&dir, &pair);
        replace(&cert, &pair.cert_pem[..pair.cert_pem.len() / 2]);
        let message = load_error(&cert, &key);
        assert!(message.contains(&cert.display().to_string()), "{message}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = files(&dir, &self_signed());
        replace(&key, &self_signed().key_pem);
        let message = load_error(&cert, &key);
        assert_eq!(
            message,
            format!(
                "TLS configuration: the private key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            )
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_last_good_certificate_and_retries() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let first = self_signed();
        let (cert, key) = files(&dir, &first);
        let reloader = CertificateReloader::load(&cert, &key).expect("load the first pair");
        let served = reloader.current().cert.clone();

        // Half a rotation: the new certificate is there, its key is not yet.
        let second = self_signed();
        replace(&cert, &second.cert_pem);
        let error = reloader
            .reload()
            .expect_err("a mismatched pair must not load");
        assert!(error.to_string().contains("does not match"), "{error}");
        assert_eq!(reloader.current().cert, served);
        // Still failing on the next poll, not silently accepted as "seen".
        assert!(reloader.reload().is_err());

        replace(&key, &second.key_pem);
        assert!(reloader.reload().expect("the completed rotation loads"));
        assert_ne!(reloader.current().cert, served);
        assert!(!reloader.reload().expect("nothing changed since"));
    }

    #[test]
    fn rewriting_the_same_content_is_not_a_rotation() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = self_signed();
        let (cert, key) = files(&dir, &pair);
        let reloader = CertificateReloader::load(&cert, &key).expect("load the pair");
        replace(&cert, &pair.cert_pem);
        replace(&key, &pair.key_pem);
        assert!(!reloader.reload().expect("same content reloads"));
    }

    #[test]
    fn the_config_offers_h2_and_http1() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = files(&dir, &self_signed());
        let reloader = CertificateReloader::load(&cert, &key).expect("load the pair");
        let config = server_config(reloader).expect("server config");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
