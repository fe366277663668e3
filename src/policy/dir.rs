//! Policies from a folder of YAML files (`serve --policy-dir`): the same files `kubectl apply` takes,
//! for local runs and GitOps checks without a cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{ImageSigningPolicy, load_file};
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
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
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
