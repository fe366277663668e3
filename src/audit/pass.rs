//! One audit pass over what runs: every distinct (namespace, image) checked once, against the
//! policies that govern it now, under the registry budget.
//!
//! A pass is resumed, never restarted: each checked image keeps the fingerprint of the policies it was
//! checked against (their names, generations, modes, authorities' trust material). A change that
//! arrives mid-pass (a policy, a key, an identity, a push event) does not send the pass back to the
//! start: the images still to come are checked against the new policies as they come, and those
//! already checked are checked again only if their own policies changed (or their repository was
//! pushed). A period starts a new round, in which everything is checked again once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::budget::Budget;
use crate::verify::Invalidated;

/// What is checked: an image in a namespace (policies select namespaces, so one image may be decided
/// differently in two).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub image: String,
}

/// One policy's (or, with no policy, the webhook's own) judgement of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The policy, or [`NO_POLICY`] for a refusal no policy made (unmatched, not ready, a bad
    /// reference).
    pub policy: String,
    /// The authority that verified, or the reason's label when it failed.
    pub rule: String,
    /// `None`: passed. Otherwise the reason's label.
    pub reason: Option<&'static str>,
    /// The refusal with its remedy (empty when it passed).
    pub message: String,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.reason.is_none()
    }
}

/// The policy label of refusals that no policy made.
pub const NO_POLICY: &str = "none";

/// What checking one image found, and what it cost.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    pub rows: Vec<Row>,
    /// Registry requests sent for it (0 for a cached result).
    pub requests: u64,
}

/// How images are checked: the real one is [`super::check::DeciderCheck`] (admission's
/// `ImageDecider`); tests count calls.
pub trait ImageCheck: Send + Sync {
    /// Changes whenever what decides `key` changes (see the module).
    fn fingerprint(&self, key: &Key) -> u64;
    fn check(&self, key: &Key) -> impl Future<Output = Checked> + Send;
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    round: u64,
    rows: Arc<[Row]>,
}

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Images checked (the others were current).
    pub checked: usize,
    pub requests: u64,
    /// Sweeps over the images: 1, or more when a change came mid-pass.
    pub sweeps: usize,
}

/// A change made mid-pass can make already checked images stale; a pass sweeps again at most this
/// many times, so that a stream of changes cannot keep it from completing (the next pass takes the
/// rest).
const MAX_SWEEPS: usize = 3;

/// The results of the passes, kept between them.
#[derive(Debug, Default)]
pub struct PassState {
    checked: HashMap<Key, Entry>,
    round: u64,
}

impl PassState {
    /// Starts a new round: every image is checked again on the next run (the periodic pass).
    pub fn new_round(&mut self) {
        self.round += 1;
    }

    /// Drops what a cache sweep dropped: those images are checked again.
    pub fn forget(&mut self, invalidated: &Invalidated) {
        match invalidated {
            Invalidated::All => self.checked.clear(),
            Invalidated::Repositories(repositories) => self.checked.retain(|key, _| {
                let name = key.image.split(['@']).next().unwrap_or_default();
                // `registry/path:tag` -> `path`; `library/` as the verifier treats it.
                let path = name.split_once('/').map_or(name, |(_, path)| path);
                let path = match path.rsplit_once(':') {
                    Some((path, tag)) if !tag.contains('/') => path,
                    _ => path,
                };
                let path = path.trim_start_matches("library/");
                !repositories.iter().any(|r| r == path)
            }),
        }
    }

    /// Checks every key of `keys` that is not current, once, under `budget`; `changes` is asked
    /// between two checks for what the caches dropped meanwhile. Keys no longer present are forgotten.
    pub async fn run<C: ImageCheck>(
        &mut self,
        keys: &BTreeSet<Key>,
        check: &C,
        budget: &mut Budget,
        mut changes: impl FnMut() -> Vec<Invalidated>,
    ) -> RunStats {
        self.checked.retain(|key, _| keys.contains(key));
        let mut stats = RunStats::default();
        for _ in 0..MAX_SWEEPS {
            let mut any = false;
            for key in keys {
                for change in changes() {
                    self.forget(&change);
                }
                let fingerprint = check.fingerprint(key);
                if self
                    .checked
                    .get(key)
                    .is_some_and(|e| e.fingerprint == fingerprint && e.round == self.round)
                {
                    continue;
                }
                if !any {
                    any = true;
                    stats.sweeps += 1;
                }
                budget.ready().await;
                let checked = check.check(key).await;
                budget.spend(checked.requests);
                stats.checked += 1;
                stats.requests += checked.requests;
                self.checked.insert(
                    key.clone(),
                    Entry {
                        fingerprint,
                        round: self.round,
                        rows: checked.rows.into(),
                    },
                );
            }
            if !any {
                break;
            }
        }
        stats
    }

    /// What the last check of `key` found (`None`: never checked).
    pub fn rows(&self, key: &Key) -> Option<&Arc<[Row]>> {
        self.checked.get(key).map(|e| &e.rows)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Images checked in order, each costing 3 requests; `policy_version` stands for the policies.
    #[derive(Default)]
    struct Counting {
        calls: Mutex<Vec<String>>,
        policy_version: AtomicU64,
        /// After this many calls, the policies change (a change mid-pass).
        change_after: Option<usize>,
    }

    impl ImageCheck for Counting {
        fn fingerprint(&self, _key: &Key) -> u64 {
            self.policy_version.load(Ordering::SeqCst)
        }

        async fn check(&self, key: &Key) -> Checked {
            let mut calls = self.calls.lock().unwrap();
            calls.push(key.image.clone());
            if self.change_after == Some(calls.len()) {
                self.policy_version.fetch_add(1, Ordering::SeqCst);
            }
            Checked {
                rows: vec![Row {
                    policy: "p".into(),
                    rule: "k".into(),
                    reason: None,
                    message: String::new(),
                }],
                requests: 3,
            }
        }
    }

    fn keys(images: &[&str]) -> BTreeSet<Key> {
        images
            .iter()
            .map(|i| Key {
                namespace: "team".into(),
                image: (*i).into(),
            })
            .collect()
    }

    fn calls(check: &Counting) -> Vec<String> {
        std::mem::take(&mut *check.calls.lock().unwrap())
    }

    #[tokio::test]
    async fn each_image_is_checked_once_and_a_current_one_not_again() {
        let check = Counting::default();
        let mut state = PassState::default();
        let mut budget = Budget::new(1000.0);
        let keys = keys(&["r/a:1", "r/b:1", "r/c:1"]);
        let stats = state.run(&keys, &check, &mut budget, Vec::new).await;
        assert_eq!((stats.checked, stats.requests, stats.sweeps), (3, 9, 1));
        assert_eq!(calls(&check), ["r/a:1", "r/b:1", "r/c:1"]);
        // Nothing changed: a second run checks nothing.
        let stats = state.run(&keys, &check, &mut budget, Vec::new).await;
        assert_eq!(stats, RunStats::default());
        // A new round (the period) checks everything once more.
        state.new_round();
        assert_eq!(
            state
                .run(&keys, &check, &mut budget, Vec::new)
                .await
                .checked,
            3
        );
        assert!(state.rows(&keys.iter().next().unwrap().clone()).is_some());
    }

    #[tokio::test]
    async fn a_policy_change_mid_pass_resumes_and_rechecks_only_what_was_checked_before_it() {
        // The policies change right after the second image: images 1 and 2 were checked against the
        // old ones and are checked again; 3 and 4 are checked once, against the new ones.
        let check = Counting {
            change_after: Some(2),
            ..Counting::default()
        };
        let mut state = PassState::default();
        let mut budget = Budget::new(1000.0);
        let keys = keys(&["r/1:x", "r/2:x", "r/3:x", "r/4:x"]);
        let stats = state.run(&keys, &check, &mut budget, Vec::new).await;
        assert_eq!(
            calls(&check),
            ["r/1:x", "r/2:x", "r/3:x", "r/4:x", "r/1:x", "r/2:x"]
        );
        assert_eq!((stats.checked, stats.sweeps), (6, 2));
    }

    #[tokio::test]
    async fn a_push_mid_pass_rechecks_that_repository_only() {
        let check = Counting::default();
        let mut state = PassState::default();
        let mut budget = Budget::new(1000.0);
        let keys = keys(&[
            "reg.example/team/a:1",
            "reg.example/team/b:1",
            "reg.example/team/c@sha256:00",
        ]);
        state.run(&keys, &check, &mut budget, Vec::new).await;
        calls(&check);
        // A push of team/a arrives while the run is under way.
        let mut pushes = vec![vec![Invalidated::Repositories(vec!["team/a".into()])]];
        let stats = state
            .run(&keys, &check, &mut budget, || {
                pushes.pop().unwrap_or_default()
            })
            .await;
        assert_eq!(calls(&check), ["reg.example/team/a:1"]);
        assert_eq!(stats.checked, 1);
        state.forget(&Invalidated::Repositories(vec!["team/c".into()]));
        state.run(&keys, &check, &mut budget, Vec::new).await;
        assert_eq!(calls(&check), ["reg.example/team/c@sha256:00"]);
    }

    #[tokio::test]
    async fn gone_images_are_forgotten() {
        let check = Counting::default();
        let mut state = PassState::default();
        let mut budget = Budget::new(1000.0);
        state
            .run(&keys(&["r/a:1", "r/b:1"]), &check, &mut budget, Vec::new)
            .await;
        state
            .run(&keys(&["r/a:1"]), &check, &mut budget, Vec::new)
            .await;
        assert_eq!(state.checked.len(), 1);
    }

    #[tokio::test]
    async fn cold_checks_are_paced_by_the_budget() {
        let check = Counting::default();
        let mut state = PassState::default();
        // 40 images x 3 requests at 100 requests/s: one second's burst (100), then ~0.2 s of debt.
        let mut budget = Budget::new(100.0);
        let images: Vec<String> = (0..40).map(|i| format!("r/{i}:1")).collect();
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let stats = state
            .run(&keys(&images), &check, &mut budget, Vec::new)
            .await;
        let took = started.elapsed();
        assert_eq!(stats.requests, 120);
        assert!(
            took >= std::time::Duration::from_millis(150)
                && took <= std::time::Duration::from_secs(2),
            "{took:?}"
        );
    }
}
