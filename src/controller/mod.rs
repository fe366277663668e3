//! The kube-runtime controller that reconciles ImageSigningPolicy resources into the compiled policy
//! snapshot the webhook reads, and writes their status conditions and events.
