//! Sigstore's public-good trust root, fetched as cosign fetches it: through TUF from
//! tuf-repo-cdn.sigstore.dev, with the sigstore crate's embedded TUF root as the anchor, into a cache
//! folder. Only `verify` asks for it, and only when cosign's flags need what cosign would take from it
//! (the Rekor key of a required transparency-log entry, a keyless signer's Fulcio and CT log) and no
//! `--trusted-root`, `--ca-roots` or `SIGSTORE_REKOR_PUBLIC_KEY` says otherwise: the guide's
//! `cosign verify --key cosign.pub IMAGE` then works with the program's name replaced. The webhook
//! never fetches trust: its policies carry their roots.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// How long the TUF fetch may take before `verify` gives up and says what to give instead.
const FETCH_LIMIT: Duration = Duration::from_secs(30);

/// The public-good `trusted_root.json`, verified through TUF, as text.
pub async fn trusted_root() -> anyhow::Result<String> {
    let dir = cache_dir().join("sigstore-public-good");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    tokio::time::timeout(
        FETCH_LIMIT,
        sigstore::trust::sigstore::SigstoreTrustRoot::new(Some(&dir)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer from tuf-repo-cdn.sigstore.dev in {FETCH_LIMIT:?}"))?
    .map_err(|e| anyhow::anyhow!("TUF update from tuf-repo-cdn.sigstore.dev failed: {e}"))?;
    let path = dir.join("trusted_root.json");
    let json = std::fs::read_to_string(&path)
        .with_context(|| format!("TUF gave no {}", path.display()))?;
    eprintln!(
        "note: trusting Sigstore's public-good roots (TUF, tuf-repo-cdn.sigstore.dev), as cosign does; \
         --trusted-root FILE chooses others"
    );
    Ok(json)
}

/// `$XDG_CACHE_HOME/registryx-guard`, else `~/.cache/registryx-guard`, else the temporary folder's.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("registryx-guard")
}
