//! registryx-guard: a Kubernetes admission webhook that admits a workload only when every image it runs
//! carries a cosign signature that the matching `ImageSigningPolicy` resources accept.
//!
//! The crate is one library with a thin binary (`src/main.rs`). Modules are named after what they do,
//! and the decision pipeline's stages use only the stages before them (see [`decide`] for the list):
//! `untrusted` (foreign text made safe to show) → `registry` → `rego` (the engine) → `policy` →
//! `verify` → `decide` → `admission`; `controller`, `server` and `cli` drive them.

pub mod admission;
pub mod audit;
pub mod cli;
pub mod controller;
pub mod decide;
mod error;
pub mod policy;
pub mod refusal;
pub mod registry;
pub mod rego;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod untrusted;
pub mod verify;

pub use error::{Error, Result};
