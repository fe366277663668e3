//! Signature verification with sigstore-rs: key and keyless authorities, trust roots, evidence, cache.
