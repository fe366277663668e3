//! OCI registry access: reference parsing, authentication, tag-to-digest resolution, signature discovery,
//! each request bounded in time and size.
