//! Rego evaluation with regorus: the input document contract and the deny / violations / allow semantics.
//!
//! This module owns three things:
//!
//! - **The input document** ([`RegoInput`], `input.rs`): one per (image, policy), the stable contract
//!   of DESIGN.md ("Rego input"). `signed` and `is_signed` are true iff at least one signature verified
//!   cryptographically; `environment` is the namespace's `environment` label, else its `env` label, else
//!   the configured default, else the namespace's name; `vulnerabilities` is RegistryX's scan summary, read by
//!   `registry::registryx` and converted by the decision stage (this engine does no HTTP).
//! - **Compilation** ([`RegoPolicy::compile`], `policy.rs`): the modules of one policy are parsed once
//!   (each as Rego v1, else as Rego v0), checked for recursion and excessive nesting (`analysis.rs`),
//!   and prepared into one regorus engine. Modules may use any package; only the decision packages are
//!   read (below), and modules that define no decision rule the engine reads, or decision-like rules
//!   (`deny` elsewhere, `denies`) that no decision rule reaches, are refused ([`RegoError::Undecided`],
//!   `decisions.rs`).
//! - **The decision** ([`RegoPolicy::evaluate`]): the prepared engine is cloned per evaluation, given
//!   the input, and queried for `deny`, `violations` and `allow` in each of `data.registry` (RegistryX's
//!   guide), `data.registryx.policy` (RegistryX's policy editor) and `data.registryx_guard` (ours). Any
//!   `deny` or `violations` message refuses; an `allow` that is defined and false refuses ("policy
//!   `<package>`: allow is false"); undefined rules refuse nothing. Errors of any kind refuse too: a
//!   [`RegoError`] is never an "allowed".
//!
//! Evaluation is bounded. Time: regorus's execution timer stops an evaluation past
//! [`RegoPolicy::with_time_limit`] (default [`DEFAULT_TIME_LIMIT`], one budget for all queries of an
//! input) with [`RegoError::Timeout`]. Work hidden inside one builtin call, which the timer cannot see:
//! `numbers.range` and `numbers.range_step` are replaced by bounded versions (`builtins.rs`). Stack:
//! recursion and nesting beyond [`MAX_EVAL_DEPTH`] are compile errors, since regorus recurses
//! on the Rust stack and an overflow would abort the process. A builtin that errors fails the
//! evaluation (strict builtin errors), and a regorus panic is contained and reported as
//! [`RegoError::Internal`]. Not bounded: memory of a single builtin call on huge strings (`sprintf`
//! widths, `concat` of large arrays); the timer stops such a policy between calls, and the pod's memory
//! limit is the backstop.

mod analysis;
mod builtins;
mod decisions;
mod error;
mod input;
mod policy;

pub use analysis::MAX_EVAL_DEPTH;
pub use builtins::MAX_RANGE_LEN;
pub use decisions::DECISION_PACKAGES;
pub(crate) use decisions::levenshtein as edit_distance;
pub use error::{RegoError, RegoSyntax, SourceLocation};
pub use input::{
    RegoAttestation, RegoInput, RegoPod, RegoRequest, RegoSignature, RegoUserInfo, Vulnerabilities,
};
pub use policy::{DEFAULT_TIME_LIMIT, RegoDecision, RegoPolicy};
