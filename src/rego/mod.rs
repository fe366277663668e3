//! Rego evaluation with regorus: the input document contract and the deny / violations / allow semantics.
