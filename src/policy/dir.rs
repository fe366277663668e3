//! Policies from a folder of YAML files (`serve --policy-dir`): the same files `kubectl apply` takes,
//! for local runs and GitOps checks without a cluster: loaded at start, and watched for changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::authority::NoSecrets;
use super::{ImageSigningPolicy, Publisher, load_file};
use crate::{Error, Result};

/// Reads every `*.yaml` / `*.yml` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<ImageSigningPolicy>> {
    let mut policies = Vec::new();
    for path in policy_files(dir)? {
        policies.extend(load_file(&path)?);
    }
    Ok(policies)
}

fn policy_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::ReadFile {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// What changes when a file of the folder changes: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    policy_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(&path).ok();
            let size = metadata.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = metadata.and_then(|m| m.modified().ok());
            (path, size, modified)
        })
        .collect()
}

/// How often the folder is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Polls a changing `--policy-dir` may wait for the folder to hold still.
const MAX_SETTLING: u32 = 10;

/// Reloads the folder when a file changes. A folder that stops parsing keeps the last good snapshot:
/// a half-edited file must not drop enforcement. A change is loaded only once the folder has held still
/// for a whole poll interval: a file caught while being written in place (truncated, or half its lines)
/// parses more often than not, as no policy or one without its authorities, and publishing that would
/// refuse the images it governs until the next poll. Renaming a finished file into place (what
/// ConfigMap mounts and most editors do) is published one interval later.
pub async fn watch(folder: PathBuf, mut publisher: Publisher, namespace: String) {
    let mut seen = fingerprint(&folder);
    let mut settling = None;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = fingerprint(&folder);
        if now == seen {
            settling = None;
            continue;
        }
        // A folder that never holds still (a file rewritten more often than every interval) is
        // loaded anyway after MAX_SETTLING polls, rather than never.
        match &mut settling {
            Some((pending, polls)) if *pending == now || *polls >= MAX_SETTLING => {}
            Some((pending, polls)) => {
                *pending = now;
                *polls += 1;
                continue;
            }
            None => {
                settling = Some((now, 1));
                continue;
            }
        }
        settling = None;
        seen = now;
        match load_dir(&folder) {
            Ok(policies) => {
                publisher.publish(&policies, &NoSecrets, &namespace);
            }
            Err(error) => {
                tracing::error!(%error, "policy folder does not load; keeping the previous policies")
            }
        }
    }
}
