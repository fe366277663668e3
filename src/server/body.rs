//! Request bodies under one memory budget: each AdmissionReview read within its size cap and time,
//! its bytes charged to a budget shared fairly by peer address, so that stalled or huge bodies on many
//! connections cannot add up to more memory than the budget nor keep the API server's review waiting.
//! Hand-written because no body-limit layer (tower-http's included) shares one budget fairly among
//! peers with revocation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

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

/// Reads a body of at most [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`], taking its share of the
/// [`BODY_BUDGET_BYTES`] that all bodies being read share (see [`BodyBudget`]), so that stalled or
/// huge bodies on many connections cannot add up to more memory than the budget, nor keep another
/// address's body waiting.
pub(super) async fn read_body(
    budget: &Arc<BodyBudget>,
    peer: std::net::IpAddr,
    body: axum::body::Body,
) -> Result<(Vec<u8>, BodyHold), (StatusCode, String)> {
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
    let crowded = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the body budget was needed by a caller holding less of it".to_owned(),
        )
    };
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut hold = BodyHold::new(budget, peer);
    loop {
        let chunk = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => next,
            () = hold.revoked() => return Err(crowded()),
        };
        let chunk = match chunk {
            Err(_) => return Err(too_slow()),
            Ok(None) => {
                hold.read_complete();
                return Ok((bytes, hold));
            }
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
            match hold.grow(kib, deadline).await {
                Ok(()) => {}
                Err(Shortfall::TimedOut) => return Err(too_slow()),
                Err(Shortfall::Revoked) => return Err(crowded()),
            }
        }
        bytes.extend_from_slice(&chunk);
    }
}

/// The body budget in KiB, shared fairly by peer address.
///
/// Each address may hold at most its share (a quarter of the budget). When the budget is spent and a
/// body needs more, and its address would then hold no more than an even split of the budget among
/// the addresses holding some, the body being read (not yet reviewed) of the address holding the most
/// is revoked (its caller gets a 503) if that address would still hold more than this one afterwards:
/// max-min fairness, so however many addresses stall bodies, an address holding little of the budget
/// (the API server, whose reviews are a few KiB) never waits behind them. With at most 1,024
/// connections, hence addresses, the even split is at least 64 KiB of budget (a 16 KiB review). Bodies already read, whose
/// reviews are under way, are not revoked: their memory is in use, and they end by their deadline.
pub struct BodyBudget {
    state: std::sync::Mutex<BudgetState>,
    /// Signalled whenever budget is given back.
    released: tokio::sync::Notify,
    total: usize,
    peer_share: usize,
}

struct BudgetState {
    available: usize,
    next_id: u64,
    peers: HashMap<std::net::IpAddr, PeerHolding>,
}

#[derive(Default)]
struct PeerHolding {
    held: usize,
    /// The bodies of this peer still being read (revocable), by id: what each holds, and its signal.
    reading: HashMap<u64, (usize, Arc<Revocation>)>,
}

#[derive(Default)]
struct Revocation {
    revoked: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// Why a body did not get more budget.
#[derive(Debug, PartialEq, Eq)]
enum Shortfall {
    TimedOut,
    Revoked,
}

impl BodyBudget {
    pub fn new(total_kib: usize, peer_share_kib: usize) -> Self {
        Self {
            state: std::sync::Mutex::new(BudgetState {
                available: total_kib,
                next_id: 0,
                peers: HashMap::new(),
            }),
            released: tokio::sync::Notify::new(),
            total: total_kib,
            peer_share: peer_share_kib.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one body holds of a [`BodyBudget`]; given back when dropped.
pub(super) struct BodyHold {
    budget: Arc<BodyBudget>,
    peer: std::net::IpAddr,
    id: u64,
    held: usize,
    revocation: Arc<Revocation>,
}

impl BodyHold {
    fn new(budget: &Arc<BodyBudget>, peer: std::net::IpAddr) -> Self {
        let revocation = Arc::new(Revocation::default());
        let mut state = budget.lock();
        let id = state.next_id;
        state.next_id += 1;
        state
            .peers
            .entry(peer)
            .or_default()
            .reading
            .insert(id, (0, Arc::clone(&revocation)));
        Self {
            budget: Arc::clone(budget),
            peer,
            id,
            held: 0,
            revocation,
        }
    }

    fn is_revoked(&self) -> bool {
        self.revocation
            .revoked
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves when another peer took this body's budget.
    async fn revoked(&self) {
        while !self.is_revoked() {
            self.revocation.notify.notified().await;
        }
    }

    /// The whole body arrived: what it holds is no longer revocable.
    fn read_complete(&mut self) {
        let mut state = self.budget.lock();
        if let Some(holding) = state.peers.get_mut(&self.peer) {
            holding.reading.remove(&self.id);
            if holding.held == 0 && holding.reading.is_empty() {
                state.peers.remove(&self.peer);
            }
        }
    }

    /// Takes `kib` more, waiting until `deadline` for budget that is given back (or revoking a body
    /// of a heavier peer, see [`BodyBudget`]).
    async fn grow(&mut self, kib: usize, deadline: tokio::time::Instant) -> Result<(), Shortfall> {
        loop {
            let budget = Arc::clone(&self.budget);
            let released = budget.released.notified();
            tokio::pin!(released);
            // Registered before looking, so that budget given back after the look wakes us.
            released.as_mut().enable();
            if self.try_grow(kib)? {
                return Ok(());
            }
            tokio::select! {
                () = released => {}
                () = self.revoked() => return Err(Shortfall::Revoked),
                () = tokio::time::sleep_until(deadline) => return Err(Shortfall::TimedOut),
            }
        }
    }

    fn try_grow(&mut self, kib: usize) -> Result<bool, Shortfall> {
        let budget = Arc::clone(&self.budget);
        let mut state = budget.lock();
        if self.is_revoked() {
            return Err(Shortfall::Revoked);
        }
        let mine = state.peers.get(&self.peer).map_or(0, |p| p.held);
        if mine + kib > budget.peer_share {
            // Over its own share: it waits for its own bodies to end, never takes another's.
            return Ok(false);
        }
        // Only a peer that would hold no more than an even split of the budget among the peers
        // holding some takes from others: above that it waits like everyone. Without this bound a
        // crowd would take from each other endlessly (each revoked caller reconnects and revokes
        // another), costing handshakes and CPU for nothing.
        let holders = state
            .peers
            .iter()
            .filter(|(peer, holding)| holding.held > 0 || **peer == self.peer)
            .count()
            .max(1);
        let even_split = budget.total / holders;
        while state.available < kib {
            if mine + kib > even_split {
                return Ok(false);
            }
            // The body being read of the peer holding the most, if that peer would still hold more
            // than this one: its largest body, so that as few callers as possible lose theirs.
            let victim = state
                .peers
                .iter()
                .filter(|(peer, holding)| {
                    **peer != self.peer && holding.held > mine + kib && !holding.reading.is_empty()
                })
                .max_by_key(|(_, holding)| holding.held)
                .and_then(|(peer, holding)| {
                    holding
                        .reading
                        .iter()
                        .filter(|(_, (held, _))| *held > 0)
                        .max_by_key(|(_, (held, _))| *held)
                        .map(|(id, _)| (*peer, *id))
                });
            let Some((peer, id)) = victim else {
                return Ok(false);
            };
            let holding = state.peers.get_mut(&peer).expect("the victim's peer");
            let (held, revocation) = holding.reading.remove(&id).expect("the victim's body");
            holding.held -= held;
            if holding.held == 0 && holding.reading.is_empty() {
                state.peers.remove(&peer);
            }
            state.available += held;
            revocation
                .revoked
                .store(true, std::sync::atomic::Ordering::Release);
            revocation.notify.notify_one();
            tracing::debug!(%peer, kib = held, for_peer = %self.peer, "body budget spent: revoked a body of the address holding the most");
        }
        state.available -= kib;
        let holding = state.peers.entry(self.peer).or_default();
        holding.held += kib;
        if let Some((held, _)) = holding.reading.get_mut(&self.id) {
            *held += kib;
        }
        self.held += kib;
        Ok(true)
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        if self.is_revoked() {
            // Its budget went to the peer that revoked it, and its entry with it.
            return;
        }
        if let Some(holding) = state.peers.get_mut(&self.peer) {
            holding.reading.remove(&self.id);
            holding.held -= self.held;
            if holding.held == 0 && holding.reading.is_empty() {
                state.peers.remove(&self.peer);
            }
        }
        state.available += self.held;
        drop(state);
        if self.held > 0 {
            self.budget.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> std::net::IpAddr {
        std::net::IpAddr::from([127, 0, 0, last])
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(200)
    }

    fn available(budget: &BodyBudget) -> usize {
        budget.lock().available
    }

    #[tokio::test]
    async fn a_peer_holding_little_revokes_the_largest_body_of_the_peer_holding_the_most() {
        let budget = Arc::new(BodyBudget::new(100, 100));
        let mut small = BodyHold::new(&budget, ip(2));
        let mut large = BodyHold::new(&budget, ip(2));
        small.grow(40, soon()).await.unwrap();
        large.grow(60, soon()).await.unwrap();
        let mut other = BodyHold::new(&budget, ip(3));
        other
            .grow(10, soon())
            .await
            .expect("taken from the heaviest");
        assert!(large.is_revoked() && !small.is_revoked());
        assert_eq!(available(&budget), 50);
        assert_eq!(
            large.grow(1, soon()).await,
            Err(Shortfall::Revoked),
            "a revoked body gets nothing more"
        );
        drop(large);
        assert_eq!(
            available(&budget),
            50,
            "a revoked body gives back nothing twice"
        );
        drop((small, other));
        assert_eq!(available(&budget), 100);
        assert!(budget.lock().peers.is_empty());
    }

    #[tokio::test]
    async fn no_peer_takes_from_one_holding_as_little_and_bodies_read_are_kept() {
        let budget = Arc::new(BodyBudget::new(100, 100));
        let mut a = BodyHold::new(&budget, ip(2));
        a.grow(50, soon()).await.unwrap();
        let mut b = BodyHold::new(&budget, ip(3));
        b.grow(50, soon()).await.unwrap();
        // .3 would hold 60 against .2's 50: it waits, and times out.
        let mut more = BodyHold::new(&budget, ip(3));
        assert_eq!(more.grow(10, soon()).await, Err(Shortfall::TimedOut));
        // A body read whole is under review: never revoked, even for a peer holding nothing.
        a.read_complete();
        b.read_complete();
        let mut fresh = BodyHold::new(&budget, ip(4));
        assert_eq!(fresh.grow(10, soon()).await, Err(Shortfall::TimedOut));
        // Budget given back wakes the waiter.
        let waiter = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            fresh.grow(10, deadline).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn only_a_peer_below_an_even_split_takes_from_others() {
        let budget = Arc::new(BodyBudget::new(100, 100));
        let mut heavy = BodyHold::new(&budget, ip(2));
        heavy.grow(70, soon()).await.unwrap();
        let mut light = BodyHold::new(&budget, ip(3));
        light.grow(30, soon()).await.unwrap();
        // .3 would hold 55 of 100 split between two: more than its even share, so it waits, though .2
        // holds more.
        let mut more = BodyHold::new(&budget, ip(3));
        assert_eq!(more.grow(25, soon()).await, Err(Shortfall::TimedOut));
        assert!(!heavy.is_revoked());
        // 20 more makes 50: its even share, taken from .2.
        more.grow(20, soon()).await.expect("up to the even split");
        assert!(heavy.is_revoked());
    }

    #[tokio::test]
    async fn a_peer_over_its_share_waits_for_its_own_bodies() {
        let budget = Arc::new(BodyBudget::new(100, 25));
        let mut first = BodyHold::new(&budget, ip(2));
        first.grow(25, soon()).await.unwrap();
        let mut second = BodyHold::new(&budget, ip(2));
        assert_eq!(second.grow(1, soon()).await, Err(Shortfall::TimedOut));
        assert_eq!(available(&budget), 75);
    }
}
