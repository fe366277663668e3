//! The process-wide rustls crypto provider.
//!
//! sigstore's `rustls-tls` feature links aws-lc-rs and kube is built with `aws-lc-rs` too, so exactly one
//! provider is compiled in. rustls still refuses to pick a default when it cannot prove there is only one,
//! so it is installed explicitly before any TLS client or server is built.

/// Installs aws-lc-rs as the default rustls provider. Safe to call more than once (tests do).
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is the state we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
