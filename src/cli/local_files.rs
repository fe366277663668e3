//! What stands in for the cluster's Secrets and ConfigMaps when `verify` runs without `--cluster`: the
//! file named after the referenced key, in the current directory. A policy that takes its key from
//! `secretRef: {name: cosign-pub}` then decides in a shell as it does in the cluster, because the user
//! runs `verify` where `cosign generate-key-pair` wrote `cosign.pub` (and where `trusted_root.json`
//! lies for a trust root's `configMapRef`). Each stand-in is said once on stderr: a decision must not
//! rest on a file the user did not know was read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::policy::authority::SecretSource;

/// The current directory's files, by key name.
pub struct LocalFiles {
    dir: PathBuf,
    /// The references already announced, so that a note is printed once per reference.
    announced: Mutex<BTreeSet<String>>,
}

impl LocalFiles {
    pub fn new(dir: PathBuf) -> LocalFiles {
        LocalFiles {
            dir,
            announced: Mutex::new(BTreeSet::new()),
        }
    }

    /// The file for `key` of `kind` `namespace/name`, read whole.
    fn read(&self, kind: &str, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
        // A key of a Secret or ConfigMap is `[-._a-zA-Z0-9]+`; anything else would reach outside the
        // directory, which no policy file gets to choose.
        let plain = !key.is_empty()
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !plain {
            return Err(format!(
                "{kind} {namespace}/{name}: {key:?} is not a valid key"
            ));
        }
        let path = self.dir.join(key);
        let shown = Path::new(".").join(key);
        let reference = format!("{kind} {namespace}/{name} key {key}");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let first = self
                    .announced
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(reference.clone());
                if first {
                    eprintln!(
                        "note: {reference} is read in the cluster only; verify uses {} instead \
                         (or run verify --cluster)",
                        shown.display()
                    );
                }
                Ok(bytes)
            }
            Err(error) => Err(format!(
                "{reference} is read in the cluster only, and {} cannot be read here ({error}): run \
                 verify in the folder that holds {key}, or with --cluster",
                shown.display()
            )),
        }
    }
}

impl SecretSource for LocalFiles {
    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
        self.read("Secret", namespace, name, key)
    }

    fn config_map_value(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
        let bytes = self.read("ConfigMap", namespace, name, key)?;
        String::from_utf8(bytes)
            .map_err(|_| format!("ConfigMap {namespace}/{name}: ./{key} is not UTF-8 text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_read_from_the_folder_and_never_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cosign.pub"), "PEM").unwrap();
        let files = LocalFiles::new(dir.path().to_owned());
        assert_eq!(
            files
                .secret_value("ns", "cosign-pub", "cosign.pub")
                .unwrap(),
            b"PEM"
        );
        for key in ["../cosign.pub", "/etc/passwd", "..", "", "a/b"] {
            let error = files.secret_value("ns", "x", key).unwrap_err();
            assert!(error.contains("not a valid key"), "{key}: {error}");
        }
        let missing = files
            .config_map_value("ns", "roots", "trusted_root.json")
            .unwrap_err();
        assert!(
            missing.contains("./trusted_root.json") && missing.contains("--cluster"),
            "{missing}"
        );
    }
}
