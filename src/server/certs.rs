//! The serving certificate of the admission port: loaded from its files, reloaded when they rotate
//! (without a restart), and the rustls server configuration that serves it.
//!
//! The certificate comes from files (in a cluster, a Secret volume that cert-manager or an operator
//! rotates). [`CertificateReloader`] is the rustls certificate resolver: every handshake asks it for the
//! current certificate, so installing a new one affects only connections made afterwards, while
//! established connections and requests in flight carry on untouched. Cached TLS sessions are forgotten
//! on rotation so that clients cannot resume their way past the new certificate. A rotation that cannot
//! be loaded (half-written file, key and certificate from different generations) keeps the last good
//! certificate.
//!
//! Hand-written because no crate in the dependency graph reloads a rustls certificate, and the ones
//! that do (axum-server's `RustlsConfig`) read the two files apart, so a rotation caught half-way pairs
//! an old key with a new certificate; this one reads them as one pair and clears the session cache.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::Error;

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
