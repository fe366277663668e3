//! The decision contract: which packages and rules decide, the decision rules a policy's modules
//! define, and refusing modules that cannot decide what their text says (a decision under a package
//! the engine never reads, or a near-miss name such as `denies`).

use super::analysis::{self, DataPath, Outline};
use super::error::{RegoError, SourceLocation};

/// The packages whose rules decide, in the order they are queried: RegistryX's guide (`registry`),
/// RegistryX's policy editor (`registryx.policy`), and registryx-guard's own (`registryx_guard`).
pub const DECISION_PACKAGES: [&str; 3] = ["registry", "registryx.policy", "registryx_guard"];

/// The rules read in each decision package.
pub(super) const DECISION_RULES: [DecisionKind; 3] = [
    DecisionKind::Deny,
    DecisionKind::Violations,
    DecisionKind::Allow,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DecisionKind {
    Deny,
    Violations,
    Allow,
}

impl DecisionKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            DecisionKind::Deny => "deny",
            DecisionKind::Violations => "violations",
            DecisionKind::Allow => "allow",
        }
    }
}

/// One decision rule the modules define, to query at every evaluation.
#[derive(Debug, Clone)]
pub(super) struct DecisionRule {
    /// `registry`, `registryx.policy`, ... for messages.
    pub(super) package: &'static str,
    pub(super) kind: DecisionKind,
    /// `data.registry.deny`.
    pub(super) path: String,
}

/// The decision rules the modules define. A decision name that is not a plain rule (a package of that
/// name, or only rules below it such as `deny.extra`) cannot be read as a decision; it is refused here
/// rather than silently ignored.
pub(super) fn decision_rules(outline: &Outline) -> Result<Vec<DecisionRule>, RegoError> {
    let mut rules = Vec::new();
    for package in DECISION_PACKAGES {
        for kind in DECISION_RULES {
            let mut path: DataPath = package.split('.').map(String::from).collect();
            path.push(kind.name().to_string());
            let data_ref = analysis::data_ref(&path);
            match outline.rules.get(&path) {
                Some(false) => rules.push(DecisionRule {
                    package,
                    kind,
                    path: data_ref,
                }),
                Some(true) => {
                    return Err(RegoError::Compile {
                        location: None,
                        message: format!("{data_ref} must be a rule, not a function"),
                    });
                }
                None => {
                    let below = outline
                        .rules
                        .keys()
                        .chain(outline.packages.iter())
                        .any(|p| p.len() > path.len() && p.starts_with(&path));
                    if below {
                        return Err(RegoError::Compile {
                            location: None,
                            message: format!(
                                "{data_ref} must be defined as one rule (a set or array of messages, or a boolean allow), not through rules or packages below it"
                            ),
                        });
                    }
                }
            }
        }
    }
    Ok(rules)
}

/// What the engine reads, for messages: "the engine reads only deny, violations and allow in packages ...".
pub(super) fn what_the_engine_reads() -> String {
    let rules = DECISION_RULES.map(DecisionKind::name);
    format!(
        "the engine reads only {} and {} in packages {} and {} (other packages serve as libraries of those)",
        rules[..rules.len() - 1].join(", "),
        rules[rules.len() - 1],
        DECISION_PACKAGES[..DECISION_PACKAGES.len() - 1].join(", "),
        DECISION_PACKAGES[DECISION_PACKAGES.len() - 1],
    )
}

/// Refuses modules that cannot decide what their text says (issue: "Nothing Ready that cannot
/// decide"). A module in a package the engine never reads (`registryx.policies`, OPA's
/// `kubernetes.admission`) or a decision under a near-miss name (`denies`) is not an error of Rego, so
/// regorus compiles it, and without this the policy would be Ready and refuse nothing. Refused:
///
/// - modules that together define no decision rule: whatever they say, nothing is ever evaluated;
/// - beside a decision rule, a rule that nothing the engine reads ever evaluates and whose name is a
///   decision's (`deny` in another package) or a near miss of one (`denies`, `deny_msg`, `violation`).
///
/// A library package (a helper module that a deciding module imports or refers to) is reached from a
/// decision rule and stays accepted; so does any unused rule with an unrelated name.
pub(super) fn check_decides(
    outline: &Outline,
    rules: &[DecisionRule],
    names: &[String],
) -> Result<(), RegoError> {
    let decision_packages: Vec<DataPath> = DECISION_PACKAGES
        .iter()
        .map(|p| p.split('.').map(String::from).collect())
        .collect();
    let roots: Vec<DataPath> = rules
        .iter()
        .map(|r| {
            let mut path: DataPath = r.package.split('.').map(String::from).collect();
            path.push(r.kind.name().to_string());
            path
        })
        .collect();
    let reached = outline.reachable(&roots);
    let module_name = |i: usize| names.get(i).cloned().unwrap_or_default();

    // Rules that look like decisions but are never read.
    struct Unread {
        module: usize,
        path: DataPath,
        line: u32,
        /// The decision rule the name is a near miss of.
        meant: Option<&'static str>,
        /// Whether the rule's package is a decision package.
        package_read: bool,
    }
    let mut unread: Vec<Unread> = Vec::new();
    for (index, module) in outline.modules.iter().enumerate() {
        let package_read = decision_packages.contains(&module.package);
        for (path, line) in &module.rules {
            if reached.contains(path) {
                continue;
            }
            let Some(name) = path.get(module.package.len()) else {
                continue;
            };
            let is_decision = DECISION_RULES.iter().any(|k| k.name() == name);
            let meant = if is_decision { None } else { near_miss(name) };
            // In a decision package, a decision rule is itself read: only near misses are unread.
            if meant.is_none() && (package_read || !is_decision) {
                continue;
            }
            unread.push(Unread {
                module: index,
                path: path.clone(),
                line: *line,
                meant,
                package_read,
            });
        }
    }
    let why = |u: &Unread| {
        let mut reasons = Vec::new();
        if !u.package_read {
            reasons.push(format!(
                "package {} is not read",
                outline.modules[u.module].package.join(".")
            ));
        }
        if let Some(meant) = u.meant {
            reasons.push(format!("did you mean {meant}?"));
        }
        reasons.join("; ")
    };

    if rules.is_empty() {
        let mut parts = Vec::new();
        for (index, module) in outline.modules.iter().enumerate() {
            let package = module.package.join(".");
            let mut part = format!("module {:?} is in package {package}", module_name(index));
            if decision_packages.contains(&module.package) {
                part.push_str(" but defines none of deny, violations and allow");
            } else if let Some(meant) = closest(&package, &DECISION_PACKAGES, 3) {
                part.push_str(&format!(" (did you mean package {meant}?)"));
            }
            let own: Vec<String> = unread
                .iter()
                .filter(|u| u.module == index)
                .map(|u| {
                    let rule = u.path[module.package.len()..].join(".");
                    match u.meant {
                        Some(meant) => format!("{rule} (did you mean {meant}?)"),
                        None => rule,
                    }
                })
                .collect();
            if !own.is_empty() {
                part.push_str(&format!(": it defines {}", own.join(", ")));
            }
            parts.push(part);
        }
        return Err(RegoError::Undecided {
            location: outline.modules.first().map(|m| SourceLocation {
                module: module_name(0),
                line: Some(m.package_line),
                column: None,
            }),
            message: format!(
                "no module defines a decision rule the engine reads, so the policy could never refuse an image: {}; {}",
                parts.join("; "),
                what_the_engine_reads()
            ),
        });
    }

    if let Some(first) = unread.first() {
        let named: Vec<String> = unread
            .iter()
            .map(|u| {
                format!(
                    "{} (module {:?} line {}: {})",
                    analysis::data_ref(&u.path),
                    module_name(u.module),
                    u.line,
                    why(u)
                )
            })
            .collect();
        let one = named.len() == 1;
        return Err(RegoError::Undecided {
            location: Some(SourceLocation {
                module: module_name(first.module),
                line: Some(first.line),
                column: None,
            }),
            message: format!(
                "{} {} never evaluated: no decision rule refers to {}; {}",
                named.join(", "),
                if one { "is" } else { "are" },
                if one { "it" } else { "them" },
                what_the_engine_reads()
            ),
        });
    }
    Ok(())
}

/// The decision rule `name` is likely a misspelling of: one edit from `deny` or `allow` (two from
/// `violations`) with the same first letter (`dney`, `alow`, `violation`), or one of them with a
/// plural, past or message suffix (`denies`, `denied`, `deny_msg`, `allowed`). Kept this narrow
/// because an unused helper with such a name is refused: `env` or `allowed_registries` are not.
fn near_miss(name: &str) -> Option<&'static str> {
    const SUFFIXES: [&str; 10] = [
        "s",
        "es",
        "ed",
        "d",
        "_msg",
        "_msgs",
        "_message",
        "_messages",
        "_reasons",
        "_rules",
    ];
    let lower = name.to_ascii_lowercase();
    DECISION_RULES
        .map(DecisionKind::name)
        .into_iter()
        .find(|&d| {
            if name == d {
                return false;
            }
            let max = if d.len() > 5 { 2 } else { 1 };
            if lower.chars().next() == d.chars().next() && levenshtein(&lower, d) <= max {
                return true;
            }
            // `deny` -> `deni`, for `denies` and `denied`.
            let stem = d.strip_suffix('y').map(|s| format!("{s}i"));
            [Some(d.to_owned()), stem]
                .into_iter()
                .flatten()
                .any(|stem| {
                    lower
                        .strip_prefix(&stem)
                        .is_some_and(|rest| SUFFIXES.contains(&rest))
                })
        })
}

/// The candidate within `max` edits of `text`, the nearest first.
fn closest<'a>(text: &str, candidates: &[&'a str], max: usize) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(text, c), *c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (`dney` is one from `deny`); also names
/// the field meant by an unknown one of a policy file (`mutateDigset`).
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_of_decision_names_are_recognised_and_helpers_are_not() {
        for (name, meant) in [
            ("denies", "deny"),
            ("denied", "deny"),
            ("deny_msg", "deny"),
            ("dney", "deny"),
            ("Deny", "deny"),
            ("violation", "violations"),
            ("violatons", "violations"),
            ("allowed", "allow"),
            ("alow", "allow"),
        ] {
            assert_eq!(near_miss(name), Some(meant), "{name}");
        }
        // Decision names themselves, and helpers a policy may well leave unused.
        for name in [
            "deny",
            "allow",
            "violations",
            "env",
            "any",
            "allowed_registries",
            "allowlist",
            "is_prod",
        ] {
            assert_eq!(near_miss(name), None, "{name}");
        }
    }

    #[test]
    fn a_misspelt_decision_package_is_suggested() {
        assert_eq!(
            closest("registryx.policies", &DECISION_PACKAGES, 3),
            Some("registryx.policy")
        );
        assert_eq!(
            closest("registryx-guard", &DECISION_PACKAGES, 3),
            Some("registryx_guard")
        );
        assert_eq!(closest("kubernetes.admission", &DECISION_PACKAGES, 3), None);
    }
}
