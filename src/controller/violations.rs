//! What the background audit (a room above, `audit`) and the controller share: whether this replica
//! holds the status-writer Lease (only the holder audits, so that replicas never double the registry
//! load or the events), and the violations the audit's last completed pass found, which the status
//! writer puts in each policy's status beside its Ready condition, under the same field manager.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, watch};

use crate::policy::Offender;

/// How many offenders a policy's status names: enough to act on, small enough for `kubectl get -o yaml`.
pub const MAX_OFFENDERS: usize = 5;

/// One policy's violations, as its status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyViolations {
    pub count: u32,
    /// At most [`MAX_OFFENDERS`].
    pub offenders: Vec<Offender>,
}

/// A cloneable handle: the controller writes `leading`, the audit writes the violations.
#[derive(Clone, Debug)]
pub struct AuditLink {
    leading: Arc<watch::Sender<bool>>,
    /// `None` until a pass completed: status then says nothing of violations rather than "0".
    violations: Arc<Mutex<Option<BTreeMap<String, PolicyViolations>>>>,
    /// Wakes the controller to write the new violations.
    published: Arc<Notify>,
}

impl Default for AuditLink {
    fn default() -> Self {
        AuditLink {
            leading: Arc::new(watch::channel(false).0),
            violations: Arc::default(),
            published: Arc::default(),
        }
    }
}

impl AuditLink {
    /// Whether this replica holds the status-writer Lease, and every change of it.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    pub(super) fn set_leading(&self, leading: bool) {
        self.leading
            .send_if_modified(|held| std::mem::replace(held, leading) != leading);
    }

    /// The violations of a completed pass, by policy name (a policy absent has none); the status
    /// writer writes them at once.
    pub fn publish(&self, violations: BTreeMap<String, PolicyViolations>) {
        *self
            .violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(violations);
        self.published.notify_one();
    }

    /// `policy`'s violations, `None` before the first completed pass.
    pub(super) fn of(&self, policy: &str) -> Option<PolicyViolations> {
        let violations = self
            .violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        violations
            .as_ref()
            .map(|all| all.get(policy).cloned().unwrap_or_default())
    }

    pub(super) async fn published(&self) {
        self.published.notified().await;
    }
}
