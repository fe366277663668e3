//! Push events shared between replicas. RegistryX's notification reaches one replica (the Service picks
//! it); each replica appends what it sweeps to a bounded log in one ConfigMap of its namespace, and
//! every replica watches that ConfigMap and applies the batches of the others, so that a stale refusal
//! or a stale admission of a de-signed image ends on every replica within a second.
//!
//! The log is `data["log"]`: `{"batches":[{"seq":N,"origin":"<replica>","repositories":[...]}` or
//! `{"seq":N,"origin":"<replica>","all":true}`, the last [`KEPT_BATCHES`] of them.
//!
//! - **Bounded writes**: one write per [`FLUSH_INTERVAL`] per replica at most (a flood costs five writes
//!   a second, and what is swept while a write is in flight joins the next one), read-modify-write
//!   under the resourceVersion precondition, retried when the other replica wrote first. A batch of
//!   more than [`MAX_BATCH_REPOSITORIES`] names is written as `all`, so the object stays below
//!   8 × 128 × 255 bytes, far under the 1 MiB a ConfigMap may hold.
//! - **Read by a watch** on that one object. The first state a replica sees is recorded, not applied:
//!   what was written before it started is older than anything it has cached. After that it applies
//!   the batches of other origins with a higher `seq` than the last it applied (its own were swept at
//!   flush). A gap (batches it missed, e.g. while disconnected), a log that went back (the ConfigMap
//!   was re-created) or a log that does not parse drops every cached result: safe, only slower.
//! - **Hints only**, as the events themselves: a batch can only make a replica ask the registry again.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{FLUSH_INTERVAL, PushCounters};
use crate::verify::Verifier;

/// Batches the log keeps: enough for a replica that misses a few writes to catch up without a gap.
pub const KEPT_BATCHES: usize = 8;
/// Names one batch may carry; a larger sweep is written as `all`.
pub const MAX_BATCH_REPOSITORIES: usize = 128;
/// Writes tried for one batch when the other replica keeps writing first.
const WRITE_ATTEMPTS: usize = 4;
const LOG_KEY: &str = "log";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Log {
    batches: Vec<Batch>,
}

/// One sweep of one replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Batch {
    seq: u64,
    origin: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

/// The batches of the log; none when the ConfigMap has no log yet.
fn read_log(config_map: &ConfigMap) -> Result<Vec<Batch>, serde_json::Error> {
    match config_map.data.as_ref().and_then(|data| data.get(LOG_KEY)) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str::<Log>(text).map(|log| log.batches),
    }
}

/// What is swept but not yet written.
#[derive(Debug, Default)]
struct Outbox {
    repositories: BTreeSet<String>,
    all: bool,
}

impl Outbox {
    fn add(&mut self, repositories: &HashSet<String>, all: bool) {
        self.all |= all;
        for repository in repositories {
            if self.all {
                break;
            }
            if self.repositories.len() == MAX_BATCH_REPOSITORIES
                && !self.repositories.contains(repository)
            {
                self.all = true;
            } else {
                self.repositories.insert(repository.clone());
            }
        }
        if self.all {
            self.repositories.clear();
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.repositories.is_empty()
    }
}

/// This replica's side of the sharing: the writer's outbox, and whether the watch has seen the log.
#[derive(Clone)]
pub(super) struct Share {
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    synced: tokio::sync::watch::Receiver<bool>,
    _tasks: Arc<Tasks>,
}

/// The writer and the watch, stopped with the last clone of [`Share`].
struct Tasks([tokio::task::AbortHandle; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Share {
    /// Starts the writer and the watch of the ConfigMap `name` on the current Tokio runtime.
    pub(super) fn start(
        config_maps: Api<ConfigMap>,
        name: &str,
        origin: &str,
        verifier: Arc<Verifier>,
        counters: Arc<PushCounters>,
    ) -> Share {
        let (outbox, wake) = (Arc::default(), Arc::new(Notify::new()));
        let (synced_sender, synced) = tokio::sync::watch::channel(false);
        let writer = Writer {
            config_maps: config_maps.clone(),
            name: name.to_owned(),
            origin: origin.to_owned(),
        };
        let written = tokio::spawn(write_batches(
            writer,
            Arc::clone(&outbox),
            Arc::clone(&wake),
            Arc::clone(&counters),
        ));
        let reader = Reader {
            origin: origin.to_owned(),
            applied: None,
        };
        let watched = tokio::spawn(read_batches(
            config_maps,
            name.to_owned(),
            reader,
            verifier,
            counters,
            synced_sender,
        ));
        Share {
            outbox,
            wake,
            synced,
            _tasks: Arc::new(Tasks([written.abort_handle(), watched.abort_handle()])),
        }
    }

    /// Hands one sweep to the writer; it joins the batch being gathered.
    pub(super) fn offer(&self, repositories: &HashSet<String>, all: bool) {
        if repositories.is_empty() && !all {
            return;
        }
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(repositories, all);
        self.wake.notify_one();
    }

    /// Resolves once the watch has seen the ConfigMap, or found it missing, for the first time.
    pub(super) async fn synced(&self) {
        let mut synced = self.synced.clone();
        // An error means the watch ended: nothing more to wait for.
        let _ = synced.wait_for(|synced| *synced).await;
    }
}

struct Writer {
    config_maps: Api<ConfigMap>,
    name: String,
    origin: String,
}

impl Writer {
    /// Appends `batch` to the log; its `seq`. A log that does not parse is replaced (the readers took it
    /// as a gap).
    async fn append(&self, batch: &Outbox) -> Result<u64, kube::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut config_map = self.config_maps.get(&self.name).await?;
            let mut batches = read_log(&config_map).unwrap_or_default();
            let seq = batches.iter().map(|b| b.seq).max().unwrap_or(0) + 1;
            batches.push(Batch {
                seq,
                origin: self.origin.clone(),
                repositories: batch.repositories.iter().cloned().collect(),
                all: batch.all,
            });
            batches.sort_by_key(|b| b.seq);
            let excess = batches.len().saturating_sub(KEPT_BATCHES);
            batches.drain(..excess);
            let log = serde_json::to_string(&Log { batches }).map_err(kube::Error::SerdeError)?;
            config_map
                .data
                .get_or_insert_default()
                .insert(LOG_KEY.to_owned(), log);
            // `replace` carries the resourceVersion just read: the other replica's write in between is
            // a 409, and this batch is appended to the log as it now is.
            match self
                .config_maps
                .replace(&self.name, &PostParams::default(), &config_map)
                .await
            {
                Ok(_) => return Ok(seq),
                Err(kube::Error::Api(status)) if status.code == 409 && attempt < WRITE_ATTEMPTS => {
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Writes what the flusher offers, one write per [`FLUSH_INTERVAL`] at most.
async fn write_batches(
    writer: Writer,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    counters: Arc<PushCounters>,
) {
    loop {
        wake.notified().await;
        let batch = std::mem::take(&mut *outbox.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            continue;
        }
        let started = tokio::time::Instant::now();
        match writer.append(&batch).await {
            Ok(seq) => {
                counters.shared.fetch_add(1, Relaxed);
                tracing::debug!(seq, "push events shared with the other replicas");
            }
            Err(error) => {
                counters.share_failures.fetch_add(1, Relaxed);
                tracing::warn!(
                    config_map = %writer.name,
                    %error,
                    "cannot share push events with the other replicas: their cached results stay until they expire"
                );
            }
        }
        tokio::time::sleep_until(started + FLUSH_INTERVAL).await;
    }
}

/// What one observed state of the log asks of this replica's caches.
#[derive(Debug, PartialEq)]
enum Apply {
    Nothing,
    /// Other replicas' batches (how many) named these repositories.
    Repositories(HashSet<String>, u64),
    /// Other replicas' batches (how many), one of which dropped everything.
    All(u64),
    /// This replica cannot know what it missed (why): everything is dropped.
    Lost(&'static str),
}

/// Which batches this replica has applied.
#[derive(Debug)]
struct Reader {
    origin: String,
    /// The `seq` of the newest batch taken into account; none before the first state is seen.
    applied: Option<u64>,
}

impl Reader {
    /// One state of the log: its batches, or none when it does not parse.
    fn observe(&mut self, log: Option<&[Batch]>) -> Apply {
        let first = self.applied.is_none();
        let last = self.applied.unwrap_or(0);
        let Some(batches) = log else {
            // The next writer starts the log anew from 1.
            self.applied = Some(0);
            return if first {
                Apply::Nothing
            } else {
                Apply::Lost("its log does not parse")
            };
        };
        let newest = batches.iter().map(|b| b.seq).max().unwrap_or(0);
        self.applied = Some(newest);
        if first {
            return Apply::Nothing;
        }
        if newest < last {
            return Apply::Lost("its log went back (was it re-created?)");
        }
        let fresh: BTreeSet<u64> = batches
            .iter()
            .map(|b| b.seq)
            .filter(|&s| s > last)
            .collect();
        if fresh.is_empty() {
            return Apply::Nothing;
        }
        if fresh.len() as u64 != newest - last {
            return Apply::Lost("batches were missed (a gap in its log)");
        }
        let (mut names, mut count, mut all) = (HashSet::new(), 0, false);
        for batch in batches
            .iter()
            .filter(|b| b.seq > last && b.origin != self.origin)
        {
            count += 1;
            all |= batch.all || batch.repositories.len() > MAX_BATCH_REPOSITORIES;
            if !all {
                names.extend(batch.repositories.iter().cloned());
            }
        }
        match (count, all) {
            (0, _) => Apply::Nothing,
            (count, true) => Apply::All(count),
            (count, false) => Apply::Repositories(names, count),
        }
    }

    /// The ConfigMap is not there: the first state is an empty log; later, the state is kept until it
    /// comes back.
    fn observe_missing(&mut self) {
        self.applied.get_or_insert(0);
    }
}

/// Watches the ConfigMap `name` and applies the other replicas' batches to `verifier`.
async fn read_batches(
    config_maps: Api<ConfigMap>,
    name: String,
    mut reader: Reader,
    verifier: Arc<Verifier>,
    counters: Arc<PushCounters>,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(config_maps, config).default_backoff());
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitApply(config_map) | watcher::Event::Apply(config_map)) => {
                listed = true;
                let log = read_log(&config_map)
                    .inspect_err(|error| {
                        tracing::warn!(config_map = %name, %error, "the push-events log does not parse");
                    })
                    .ok();
                let apply = reader.observe(log.as_deref());
                apply_to(apply, &verifier, &counters, &name);
                synced.send_replace(true);
            }
            Ok(watcher::Event::InitDone) => {
                if !listed {
                    tracing::warn!(config_map = %name, "the push-events ConfigMap does not exist: events reach only the replica RegistryX notifies");
                    reader.observe_missing();
                }
                synced.send_replace(true);
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(config_map = %name, "the push-events ConfigMap was deleted: events reach only the replica RegistryX notifies until it is back");
            }
            Err(error) => {
                tracing::warn!(config_map = %name, %error, "push-events watch error; retrying");
            }
        }
    }
}

fn apply_to(apply: Apply, verifier: &Verifier, counters: &PushCounters, name: &str) {
    match apply {
        Apply::Nothing => {}
        Apply::Repositories(names, batches) => {
            counters.from_peers.fetch_add(batches, Relaxed);
            tracing::info!(
                repositories = names.len(),
                "RegistryX push through another replica: dropping cached results"
            );
            if !names.is_empty() {
                verifier.invalidate_repositories(names);
            }
        }
        Apply::All(batches) => {
            counters.from_peers.fetch_add(batches, Relaxed);
            tracing::info!(
                "RegistryX push events overflowed on another replica: dropping every cached result"
            );
            verifier.invalidate_all();
        }
        Apply::Lost(why) => {
            tracing::warn!(config_map = %name, "push-events ConfigMap: {why}; dropping every cached result");
            verifier.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, origin: &str, repositories: &[&str]) -> Batch {
        Batch {
            seq,
            origin: origin.to_owned(),
            repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
            all: false,
        }
    }

    fn names(repositories: &[&str]) -> HashSet<String> {
        repositories.iter().map(|r| (*r).to_owned()).collect()
    }

    fn reader() -> Reader {
        Reader {
            origin: "me".into(),
            applied: None,
        }
    }

    #[test]
    fn the_first_state_is_recorded_and_later_batches_of_others_applied_once() {
        let mut reader = reader();
        let old = [batch(1, "peer", &["a"]), batch(2, "peer", &["b"])];
        assert_eq!(reader.observe(Some(&old)), Apply::Nothing);
        let mut log = old.to_vec();
        log.extend([batch(3, "me", &["c"]), batch(4, "peer", &["d", "e"])]);
        assert_eq!(
            reader.observe(Some(&log)),
            Apply::Repositories(names(&["d", "e"]), 1),
            "its own batch was swept at flush"
        );
        assert_eq!(reader.observe(Some(&log)), Apply::Nothing, "applied once");
        log.push(Batch {
            all: true,
            ..batch(5, "peer", &[])
        });
        assert_eq!(reader.observe(Some(&log)), Apply::All(1));
        log.push(batch(6, "me", &["f"]));
        assert_eq!(reader.observe(Some(&log)), Apply::Nothing);
    }

    #[test]
    fn gaps_garbage_and_a_log_that_went_back_drop_everything() {
        let mut reader = reader();
        assert_eq!(
            reader.observe(Some(&[batch(3, "peer", &["a"])])),
            Apply::Nothing
        );
        let gap = [batch(5, "peer", &["b"]), batch(6, "peer", &["c"])];
        assert!(matches!(reader.observe(Some(&gap)), Apply::Lost(_)));
        assert!(matches!(reader.observe(None), Apply::Lost(_)));
        // After garbage, the log starts anew from 1.
        assert_eq!(
            reader.observe(Some(&[batch(1, "peer", &["d"])])),
            Apply::Repositories(names(&["d"]), 1)
        );
        reader.observe(Some(&[batch(1, "peer", &["d"]), batch(2, "peer", &["e"])]));
        assert!(matches!(
            reader.observe(Some(&[batch(1, "other", &["f"])])),
            Apply::Lost(_)
        ));
        let mut fresh = self::reader();
        assert_eq!(fresh.observe(None), Apply::Nothing, "first state: recorded");
    }

    #[test]
    fn a_missing_config_map_is_an_empty_log_at_first_and_changes_nothing_later() {
        let mut reader = reader();
        reader.observe_missing();
        assert_eq!(
            reader.observe(Some(&[batch(1, "peer", &["a"])])),
            Apply::Repositories(names(&["a"]), 1)
        );
        reader.observe_missing();
        assert_eq!(
            reader.observe(Some(&[batch(1, "peer", &["a"]), batch(2, "peer", &["b"])])),
            Apply::Repositories(names(&["b"]), 1)
        );
    }

    #[test]
    fn a_batch_is_bounded_and_serialized_as_documented() {
        let mut outbox = Outbox::default();
        outbox.add(&names(&["a", "b"]), false);
        outbox.add(&names(&["b", "c"]), false);
        assert_eq!(outbox.repositories.len(), 3);
        let many: HashSet<String> = (0..=MAX_BATCH_REPOSITORIES)
            .map(|n| format!("r{n}"))
            .collect();
        outbox.add(&many, false);
        assert!(outbox.all && outbox.repositories.is_empty());
        outbox.add(&names(&["d"]), false);
        assert!(
            outbox.all && outbox.repositories.is_empty(),
            "all stays all"
        );
        let all = Batch {
            all: true,
            ..batch(2, "pod-1", &[])
        };
        let text = serde_json::to_string(&Log {
            batches: vec![batch(1, "pod-0", &["team/app"]), all],
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"batches":[{"seq":1,"origin":"pod-0","repositories":["team/app"]},{"seq":2,"origin":"pod-1","all":true}]}"#
        );
    }
}
