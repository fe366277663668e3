//! The integration tests that need no Kubernetes control plane, as one binary: one link of the crate
//! instead of one per file, and tests of different files share the test threads. Tests that must not
//! overlap tests of another kind claim a room (`support::serial`).

#[path = "../support/mod.rs"]
mod support;

mod attestation_log;
mod attestation_parity;
mod attestations;
mod cli;
mod containment;
mod floods;
mod harness_fakes;
mod keyless;
mod layering;
mod prometheus_scrape;
mod reasons;
mod reference_grammar;
mod registry_failures;
mod registry_tls;
mod rego;
mod revocation;
mod tls_rotation;
mod transparency_log;
mod verify;
mod verify_command;
mod webhook;
