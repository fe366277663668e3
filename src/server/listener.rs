//! The HTTPS accept loop of the admission port: serves an axum router over HTTP/1.1 and HTTP/2 on TLS,
//! with caps on open connections (in total and per peer address, shared fairly by eviction when full),
//! a first-byte timer before the handshake while crowded, and a bounded drain on shutdown.
//!
//! Hand-written because axum::serve takes no TLS acceptor, and the TLS servers on crates.io
//! (axum-server, tls-listener) cap connections only in total: no per-peer cap, no fair-share eviction
//! and no timer before the ClientHello, which are what keep the API server's connections in under a crowd.
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

use super::keepalive::{self, CountingIo, Draining, HeadTimer};

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

/// Serves `router` over TLS on `listener` until `shutdown` completes, then stops accepting and waits for
/// the open connections to finish what they are doing (idle HTTP/1.1 connections close at once, HTTP/2
/// connections get a GOAWAY and finish their streams). Once `draining` is set, before `shutdown`,
/// HTTP/1.1 connections close after their next response (see `keepalive`).
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
                router
                    .clone()
                    .layer(axum::Extension(PeerAddr(peer.ip())))
                    .layer(axum::Extension(keepalive::ConnectionOpened(Instant::now()))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

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
}
