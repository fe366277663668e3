//! The integration tests that start a Kubernetes control plane (etcd and kube-apiserver), a node that runs
//! pods, or helm: a binary of their own, run after `it`, so that these heavy processes never share the
//! machine with the timing-sensitive tests there. Control planes may run side by side; the node runs
//! alone (`support::cluster::ControlPlane` claims the room, `support::serial`).

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod chart;
mod cluster;
mod controller;
mod crd;
mod e2e;
mod examples;
mod pods;
mod policy_reports;
mod push_sharing;
mod release;
mod replicas;
mod toolchain;
mod verify_cluster;
