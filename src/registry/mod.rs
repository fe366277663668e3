//! OCI registry access: reference parsing, authentication, tag-to-digest resolution, and the reads that
//! signature discovery needs, each request bounded in time and size.
//!
//! The client is written on reqwest rather than taken from oci-client because RegistryX needs things
//! oci-client cannot be told: its token challenge names `localhost:5000` whatever host it is reached at,
//! its 403 `DENIED` carries a policy message that must reach the user, and cosign's referrers fallback
//! tag must be read whenever the referrers endpoint answers anything but an index (oci-client only falls
//! back on 404). Every error names the registry and the step ([`RegistryError`]).
//!
//! Rooms, one job each: `reference` and `grammar` (image references), `auth` (credentials), `oci`
//! (OCI content types), `client` (the distribution API, over its `transport` and its `token` flow),
//! `registryx` (RegistryX's REST API) and `error` (the error all of them return).

mod auth;
mod client;
mod error;
pub mod grammar;
mod oci;
mod reference;
pub mod registryx;

pub use auth::{Credentials, DockerConfig};
pub use client::{Fetched, RegistryClient, RegistryConfig, Resolved};
pub use error::{ErrorKind, RegistryError, Step};
pub(crate) use oci::is_sha256_digest;
pub use oci::{Descriptor, ImageIndex, ImageManifest, MediaType, is_index, is_oci_index};
pub use reference::{DOCKER_HUB, ImageRef, InvalidReference, canonical_registry};
