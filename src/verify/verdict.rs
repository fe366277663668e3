//! The verdict types: what one authority concluded about one digest, one policy's verdict on one image,
//! and every governing policy's verdict on it, with the JSON shape `verify --output json` and the
//! decision log print.

use serde::Serialize;

pub use super::check::Proof;
use crate::policy::Mode;
use crate::refusal::{Failure, Reason};

/// What one authority concluded about one digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityEvidence {
    pub authority: String,
    /// The digest the evidence is about (a platform manifest's, for `multiArch: everyPlatform`).
    pub digest: String,
    pub outcome: Outcome,
    /// The attestations found for the digest and what each proved, when the authority requires any.
    pub attestations: Vec<super::check::Attestation>,
    /// The first required predicate type with no counted attestation (the outcome then says why).
    pub unmet_attestation: Option<String>,
}

/// A verified signature's proof, or why none verified: never both, never neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Verified(Proof),
    Refused(Failure),
}

impl AuthorityEvidence {
    pub fn verified(&self) -> bool {
        matches!(self.outcome, Outcome::Verified(_))
    }

    pub fn proof(&self) -> Option<&Proof> {
        match &self.outcome {
            Outcome::Verified(proof) => Some(proof),
            Outcome::Refused(_) => None,
        }
    }

    /// The predicate type of a required attestation that is not there, if that is why it refused.
    pub fn missing_attestation(&self) -> Option<&str> {
        self.unmet_attestation.as_deref()
    }

    /// The verified statements, of any type but a signature's, with their predicates (for Rego):
    /// only those of an authority whose own verdict is verified.
    pub fn verified_attestations(&self) -> impl Iterator<Item = &super::check::Attestation> {
        self.attestations
            .iter()
            .filter(move |a| a.verified && self.verified())
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.outcome {
            Outcome::Verified(_) => None,
            Outcome::Refused(failure) => Some(failure),
        }
    }
}

/// The JSON of `verify --output json` and the decision log keeps its shape: `verified`, and either the
/// proof's fields or `reason` with `reasonKind`.
impl Serialize for AuthorityEvidence {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            authority: &'a str,
            digest: &'a str,
            verified: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason_kind: Option<Reason>,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            proof: Option<&'a Proof>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            attestations: &'a [super::check::Attestation],
        }
        let failure = self.failure();
        Wire {
            authority: &self.authority,
            digest: &self.digest,
            verified: self.verified(),
            reason: failure.map(|f| f.message.as_str()),
            reason_kind: failure.map(|f| f.reason),
            proof: self.proof(),
            attestations: &self.attestations,
        }
        .serialize(serializer)
    }
}

/// Why a policy failed: its reason (the most telling of its authorities', or Rego), every message,
/// and the remedy of that reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFailure {
    pub reason: Reason,
    /// In words a user can act on, one line each.
    pub messages: Vec<String>,
    pub remedy: Option<String>,
}

/// One policy's verdict on one image.
#[derive(Clone, Debug)]
pub struct PolicyVerdict {
    pub policy: String,
    /// The policy's uid, for what refers to the policy object (its refusal events).
    pub policy_uid: Option<String>,
    pub mode: Mode,
    pub authorities: Vec<AuthorityEvidence>,
    /// `None`: the policy passed.
    pub failure: Option<PolicyFailure>,
    /// The input document the policy's Rego rules were evaluated on (`verify --output json` shows it,
    /// so that a module can be debugged offline on exactly what the webhook gave it).
    pub rego_input: Option<serde_json::Value>,
    /// Every authority was checked against the resolved digest: the evidence the Rego stage reads
    /// exists. False when the registry could not be reached or the image not resolved.
    pub evidence_complete: bool,
}

impl PolicyVerdict {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// The reason it failed, if it did.
    pub fn reason(&self) -> Option<Reason> {
        self.failure.as_ref().map(|f| f.reason)
    }

    /// Its messages (none when it passed).
    pub fn messages(&self) -> &[String] {
        self.failure.as_ref().map_or(&[], |f| &f.messages[..])
    }

    /// Fails the policy with `messages`; a policy that failed already keeps its reason and remedy and
    /// gains the messages.
    pub fn refuse(&mut self, reason: Reason, messages: Vec<String>) {
        match &mut self.failure {
            Some(failure) => failure.messages.extend(messages),
            None => {
                self.failure = Some(PolicyFailure {
                    reason,
                    messages,
                    remedy: None,
                });
            }
        }
    }
}

#[cfg(test)]
impl PolicyVerdict {
    /// A verdict of `policy` in `mode` that failed for want of a signature (for unit tests).
    pub(crate) fn failing(policy: &str, mode: Mode) -> PolicyVerdict {
        PolicyVerdict {
            policy: policy.into(),
            policy_uid: None,
            mode,
            authorities: Vec::new(),
            failure: Some(PolicyFailure {
                reason: Reason::NoSignature,
                messages: vec!["no signature".into()],
                remedy: None,
            }),
            rego_input: None,
            evidence_complete: true,
        }
    }
}

/// As [`AuthorityEvidence`]: `passed`, `reasons`, `remedy`, `reasonKind`.
impl Serialize for PolicyVerdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            policy: &'a str,
            mode: Mode,
            passed: bool,
            authorities: &'a [AuthorityEvidence],
            reasons: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            remedy: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason_kind: Option<Reason>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rego_input: Option<&'a serde_json::Value>,
        }
        Wire {
            policy: &self.policy,
            mode: self.mode,
            passed: self.passed(),
            authorities: &self.authorities,
            reasons: self.messages(),
            remedy: self.failure.as_ref().and_then(|f| f.remedy.as_deref()),
            reason_kind: self.reason(),
            rego_input: self.rego_input.as_ref(),
        }
        .serialize(serializer)
    }
}

/// Every governing policy's verdict on one image.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVerdict {
    pub image: String,
    pub digest: Option<String>,
    pub policies: Vec<PolicyVerdict>,
}

impl ImageVerdict {
    /// Admitted when every enforcing policy passed (`warn` policies only warn, `audit` ones only
    /// report).
    pub fn admitted(&self) -> bool {
        self.policies
            .iter()
            .all(|p| p.passed() || p.mode != Mode::Enforce)
    }

    /// The warnings of `warn` policies that failed.
    pub fn warnings(&self) -> impl Iterator<Item = &PolicyVerdict> {
        self.policies
            .iter()
            .filter(|p| !p.passed() && p.mode == Mode::Warn)
    }

    /// The enforcing policies that failed.
    pub fn refusing(&self) -> impl Iterator<Item = &PolicyVerdict> {
        self.policies
            .iter()
            .filter(|p| !p.passed() && p.mode == Mode::Enforce)
    }

    /// Why it was refused, as a type: the reason of the first enforcing policy that failed (never read
    /// out of the messages, where a repository named `team/rego-app` would pass for a Rego refusal).
    pub fn reason(&self) -> Option<Reason> {
        self.refusing().find_map(PolicyVerdict::reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_policy_neither_refuses_nor_warns_at_admission() {
        let mut verdict = ImageVerdict {
            image: "r/a:1".into(),
            digest: None,
            policies: vec![PolicyVerdict::failing("dry-run", Mode::Audit)],
        };
        assert!(verdict.admitted());
        assert_eq!(verdict.warnings().count(), 0);
        assert_eq!(verdict.refusing().count(), 0);
        assert_eq!(verdict.reason(), None);
        // Beside an enforcing policy that fails, only the enforcing one refuses.
        verdict
            .policies
            .push(PolicyVerdict::failing("strict", Mode::Enforce));
        assert!(!verdict.admitted());
        let refusing: Vec<&str> = verdict.refusing().map(|p| p.policy.as_str()).collect();
        assert_eq!(refusing, ["strict"]);
    }
}
