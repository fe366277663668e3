//! The audit of what already runs.

pub mod reports;
