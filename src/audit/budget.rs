//! The audit's registry budget: a token bucket of registry requests per second.
//!
//! Hand-written on tokio's clock because no rate limiter is in the dependency graph (`governor` is in
//! neither Cargo.lock nor the package lists here), and this one is charged after the fact: what a
//! verification costs is known only once it ran (a cached one costs nothing, a cold one a few
//! requests), so a check waits until the bucket is out of debt, runs, and is charged what it cost.
//! Over any interval the audit then sends at most `burst + rate x seconds` requests, plus one
//! verification's worth.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    /// Requests per second.
    rate: f64,
    /// The most requests saved up while idle (one second's worth).
    burst: f64,
    /// May go below zero: a verification that cost more than was left.
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// `rate` requests per second (at least 0.1: a budget of zero would stall every pass).
    pub fn new(rate: f64) -> Budget {
        let rate = rate.max(0.1);
        Budget {
            rate,
            burst: rate.max(1.0),
            tokens: rate.max(1.0),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long a check must wait at `now` before it may run: until the bucket is out of debt.
    pub fn wait_at(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Charges `requests` spent at `now`.
    pub fn spend_at(&mut self, now: Instant, requests: u64) {
        self.refill(now);
        self.tokens -= requests as f64;
    }

    /// Waits until a check may run.
    pub async fn ready(&mut self) {
        let wait = self.wait_at(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    pub fn spend(&mut self, requests: u64) {
        self.spend_at(Instant::now(), requests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_checks_never_wait_and_cold_ones_are_paced_to_the_rate() {
        let start = Instant::now();
        let mut budget = Budget::new(10.0);
        // Cache hits cost nothing: any number of them run at once.
        for _ in 0..1000 {
            assert_eq!(budget.wait_at(start), Duration::ZERO);
            budget.spend_at(start, 0);
        }
        // A second's burst of 10 requests, then a debt of 5 that takes half a second to repay.
        budget.spend_at(start, 15);
        assert_eq!(budget.wait_at(start), Duration::from_millis(500));
        let later = start + Duration::from_millis(500);
        assert_eq!(budget.wait_at(later), Duration::ZERO);
        // Over 10 simulated seconds of checks that each cost 3 requests, at most burst + rate x 10
        // (+ one check's) requests were sent.
        let mut now = later;
        let mut spent = 0;
        while now < later + Duration::from_secs(10) {
            now += budget.wait_at(now);
            budget.spend_at(now, 3);
            spent += 3;
        }
        assert!(spent <= 10 + 100 + 3, "{spent} requests in 10 s at 10/s");
        assert!(spent >= 100, "{spent}: the budget is not used");
    }

    #[test]
    fn idle_time_saves_at_most_one_burst() {
        let start = Instant::now();
        let mut budget = Budget::new(5.0);
        budget.spend_at(start, 5);
        let much_later = start + Duration::from_secs(3600);
        budget.spend_at(much_later, 6);
        assert_eq!(budget.wait_at(much_later), Duration::from_millis(200));
    }
}
