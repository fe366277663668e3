//! A policy's Rego modules, compiled once into a prepared regorus engine, and the decision read from
//! them for one input document.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};
use serde::Deserialize;

use super::analysis::{self, DataPath, Outline};
use super::builtins;
use super::error::{RegoError, RegoSyntax, SourceLocation, condense};

/// How long one evaluation (all decision rules of one input) may run by default.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);

/// The packages whose rules decide, in the order they are queried: RegistryX's guide (`registry`),
/// RegistryX's policy editor (`registryx.policy`), and registryx-guard's own (`registryx_guard`).
pub const DECISION_PACKAGES: [&str; 3] = ["registry", "registryx.policy", "registryx_guard"];

/// The rules read in each decision package.
const DECISION_RULES: [DecisionKind; 3] = [
    DecisionKind::Deny,
    DecisionKind::Violations,
    DecisionKind::Allow,
];

/// Work units (interpreter steps) between two reads of the clock. A step is one statement or
/// expression, well under a microsecond for the policies this runs, so 16 keeps the overrun of the
/// budget in microseconds while sparing most clock reads.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(16).unwrap();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecisionKind {
    Deny,
    Violations,
    Allow,
}

impl DecisionKind {
    fn name(self) -> &'static str {
        match self {
            DecisionKind::Deny => "deny",
            DecisionKind::Violations => "violations",
            DecisionKind::Allow => "allow",
        }
    }
}

/// One decision rule the modules define, to query at every evaluation.
#[derive(Debug, Clone)]
struct DecisionRule {
    /// `registry`, `registryx.policy`, ... for messages.
    package: &'static str,
    kind: DecisionKind,
    /// `data.registry.deny`.
    path: String,
}

/// What the rules decided for one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegoDecision {
    /// Why the image is refused: every `deny` and `violations` message and every `allow` that is false,
    /// sorted and without duplicates. Empty when the rules allow the image.
    pub denials: Vec<String>,
}

impl RegoDecision {
    /// Whether the rules allow the image.
    pub fn allowed(&self) -> bool {
        self.denials.is_empty()
    }
}

/// Rego modules compiled into a prepared regorus engine, evaluated on a clone of that engine per input.
///
/// Modules may be in any package; the decision reads only `deny`, `violations` and `allow` of the
/// packages in [`DECISION_PACKAGES`] (other packages serve as libraries; modules that cannot decide are
/// refused, see `check_decides`). Each module is read as Rego v1
/// first and, if that fails, as Rego v0, so RegistryX's `deny[msg] { ... }` and OPA 1.0's
/// `deny contains msg if { ... }` both work, side by side if need be.
#[derive(Debug, Clone)]
pub struct RegoPolicy {
    /// Parsed, analyzed and prepared: clones start evaluating without recompiling anything.
    engine: Engine,
    rules: Vec<DecisionRule>,
    time_limit: Duration,
}

impl RegoPolicy {
    /// Compiles `(name, source)` modules. Names must be unique: errors quote them.
    pub fn compile(modules: &[(String, String)]) -> Result<RegoPolicy, RegoError> {
        // regorus is not known to panic while parsing, but policy text is user input and a panic
        // would take the controller down with it.
        catch_unwind(|| Self::compile_unguarded(modules)).unwrap_or_else(|panic| {
            Err(RegoError::Internal {
                during: "compiling the Rego modules".into(),
                message: panic_message(&panic),
            })
        })
    }

    fn compile_unguarded(modules: &[(String, String)]) -> Result<RegoPolicy, RegoError> {
        let mut seen = BTreeSet::new();
        for (name, _) in modules {
            if !seen.insert(name.as_str()) {
                return Err(RegoError::DuplicateModule {
                    module: name.clone(),
                });
            }
        }

        let mut engine = Engine::new();
        // Fail closed: a builtin that errors (a type error, a bad regex) fails the evaluation instead of
        // leaving an expression undefined, which could silently skip a deny rule. This is OPA's
        // `--strict-builtin-errors`.
        engine.set_strict_builtin_errors(true);
        builtins::register(&mut engine).map_err(|e| RegoError::Internal {
            during: "registering the bounded builtins".into(),
            message: e.to_string(),
        })?;
        for (name, source) in modules {
            add_module(&mut engine, name, source)?;
        }

        let names: Vec<String> = modules.iter().map(|(name, _)| name.clone()).collect();
        let outline = analysis::check(engine.get_modules(), &names)?;
        let rules = decision_rules(&outline)?;

        // Prepare now (analysis, scheduling, loop hoisting), once: every clone inherits the prepared
        // state. A trivial query is the public way to trigger it; errors here are compile errors
        // (unsafe variables, unknown imports, conflicting rule kinds).
        if let Err(e) = engine.eval_query("true".into(), false) {
            let diagnostic = condense(&e.to_string());
            return Err(RegoError::Compile {
                location: diagnostic.location,
                message: diagnostic.message,
            });
        }

        // Last, so that a module's own mistakes (syntax, unsafe variables) are reported first.
        check_decides(&outline, &rules, &names)?;

        Ok(RegoPolicy {
            engine,
            rules,
            time_limit: DEFAULT_TIME_LIMIT,
        })
    }

    /// Bounds every evaluation (all decision rules of one input together) to `limit` of wall-clock
    /// time; past it, evaluation stops with `RegoError::Timeout`.
    pub fn with_time_limit(mut self, limit: Duration) -> RegoPolicy {
        self.time_limit = limit;
        self
    }

    /// The time limit of one evaluation.
    pub fn time_limit(&self) -> Duration {
        self.time_limit
    }

    /// Whether the modules define any decision rule. Always true of a compiled policy: one without any is
    /// refused by [`RegoPolicy::compile`] (it could never refuse an image).
    pub fn has_decision_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The decision rules evaluated, such as `data.registry.deny`, in evaluation order.
    pub fn decision_rules(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.path.clone()).collect()
    }

    /// Evaluates the decision rules on `input` (normally `RegoInput::to_value()`), on a clone of the
    /// prepared engine so that evaluations share nothing and never recompile.
    pub fn evaluate(&self, input: &serde_json::Value) -> Result<RegoDecision, RegoError> {
        if self.rules.is_empty() {
            return Ok(RegoDecision::default());
        }
        let input = Value::deserialize(input).map_err(|e| RegoError::Input(e.to_string()))?;
        let mut engine = self.engine.clone();
        engine.set_input(input);

        let started = Instant::now();
        let mut denials = BTreeSet::new();
        for rule in &self.rules {
            // One budget for the whole evaluation: regorus restarts its timer at every query, so each
            // query gets what the previous ones left.
            let remaining = self.time_limit.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(RegoError::Timeout {
                    rule: rule.path.clone(),
                    limit: self.time_limit,
                });
            }
            engine.set_execution_timer_config(ExecutionTimerConfig {
                limit: remaining,
                check_interval: TIMER_CHECK_INTERVAL,
            });
            // regorus has panics reachable from policy text (sprintf with a non-ASCII digit in a
            // width); a panic must refuse this image, not take the webhook down. The engine is a
            // throw-away clone, so no broken state outlives the panic.
            let outcome = catch_unwind(AssertUnwindSafe(|| engine.eval_rule(rule.path.clone())));
            let value = match outcome {
                Ok(Ok(value)) => value,
                Ok(Err(e)) => return Err(self.evaluation_error(rule, &e)),
                Err(panic) => {
                    return Err(RegoError::Internal {
                        during: format!("evaluating {}", rule.path),
                        message: panic_message(&panic),
                    });
                }
            };
            collect(rule, &value, &mut denials);
        }
        Ok(RegoDecision {
            denials: denials.into_iter().collect(),
        })
    }

    fn evaluation_error(&self, rule: &DecisionRule, error: &anyhow::Error) -> RegoError {
        for cause in error.chain() {
            if let Some(limit) = cause.downcast_ref::<LimitError>() {
                return match limit {
                    LimitError::TimeLimitExceeded { .. } => RegoError::Timeout {
                        rule: rule.path.clone(),
                        limit: self.time_limit,
                    },
                    other => RegoError::Limit {
                        rule: rule.path.clone(),
                        message: other.to_string(),
                    },
                };
            }
        }
        let diagnostic = condense(&error.to_string());
        if let Some((_, message)) = diagnostic.message.split_once(builtins::LIMIT_MARKER) {
            let message = message.trim();
            return RegoError::Limit {
                rule: rule.path.clone(),
                message: match diagnostic.location {
                    Some(location) => format!("{location}: {message}"),
                    None => message.to_string(),
                },
            };
        }
        RegoError::Evaluation {
            rule: rule.path.clone(),
            location: diagnostic.location,
            message: diagnostic.message,
        }
    }
}

/// Adds one module, read as Rego v1 and, failing that, as Rego v0. regorus fixes the syntax per
/// `add_policy` call (`set_rego_v0`), and a failed call leaves the engine unchanged, so trying both is
/// safe. A module with `import rego.v1` is v1 under either setting.
fn add_module(engine: &mut Engine, name: &str, source: &str) -> Result<(), RegoError> {
    engine.set_rego_v0(false);
    let v1 = match engine.add_policy(name.to_string(), source.to_string()) {
        Ok(_) => return Ok(()),
        Err(e) => condense(&e.to_string()),
    };
    engine.set_rego_v0(true);
    let v0 = engine.add_policy(name.to_string(), source.to_string());
    engine.set_rego_v0(false);
    let v0 = match v0 {
        Ok(_) => return Ok(()),
        Err(e) => condense(&e.to_string()),
    };
    // Report the reading that got further into the module: a v0 module with a typo fails as v1 on its
    // first rule body (`if` required) but as v0 only at the typo, and a v1 module fails as v0 on its
    // first `contains` or `if`. When both stop at the same place and v1 only missed its keywords, the
    // module is v0 and v0's complaint is the one that helps.
    let position = |d: &super::error::Diagnostic| {
        d.location
            .as_ref()
            .map(|l| (l.line.unwrap_or(0), l.column.unwrap_or(0)))
            .unwrap_or((0, 0))
    };
    let v0_meant = position(&v0) > position(&v1)
        || (position(&v0) == position(&v1) && v1.message.contains("keyword is required"));
    let (chosen, syntax) = if v0_meant {
        (v0, RegoSyntax::V0)
    } else {
        (v1, RegoSyntax::V1)
    };
    let location = match chosen.location {
        Some(location) => SourceLocation {
            // regorus names the module as we named it; keep ours in case it ever differs.
            module: name.to_string(),
            ..location
        },
        None => SourceLocation {
            module: name.to_string(),
            line: None,
            column: None,
        },
    };
    Err(RegoError::Syntax {
        location,
        message: chosen.message,
        syntax,
    })
}

/// The decision rules the modules define. A decision name that is not a plain rule (a package of that
/// name, or only rules below it such as `deny.extra`) cannot be read as a decision; it is refused here
/// rather than silently ignored.
fn decision_rules(outline: &Outline) -> Result<Vec<DecisionRule>, RegoError> {
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
fn what_the_engine_reads() -> String {
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
fn check_decides(
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

/// Adds what one decision rule's value says against the image to `denials`.
///
/// - `deny` / `violations`: every element of a set or an array is a message (strings as they are,
///   anything else as JSON); a lone string is one message; an object contributes its keys whose value
///   is not false (regorus reads a v0 `deny[msg] if {...}` as an object `{msg: true}`); `true` is a
///   refusal without a message; undefined, null, false and empty collections refuse nothing.
/// - `allow`: `false` refuses with "policy `<package>`: allow is false"; undefined and `true` refuse
///   nothing; any other value refuses, since it cannot be read as a decision.
fn collect(rule: &DecisionRule, value: &Value, denials: &mut BTreeSet<String>) {
    let package = rule.package;
    let name = rule.kind.name();
    match rule.kind {
        DecisionKind::Allow => match value {
            Value::Undefined | Value::Bool(true) => {}
            Value::Bool(false) => {
                denials.insert(format!("policy {package}: allow is false"));
            }
            other => {
                let shown = serde_json::to_string(other).unwrap_or_else(|_| other.to_string());
                denials.insert(format!("policy {package}: allow is {shown}, not a boolean"));
            }
        },
        DecisionKind::Deny | DecisionKind::Violations => {
            let mut add = |message: String| {
                denials.insert(if message.is_empty() {
                    format!("policy {package}: {name} has an empty message")
                } else {
                    message
                });
            };
            match value {
                Value::Undefined | Value::Null | Value::Bool(false) => {}
                Value::Bool(true) => add(format!("policy {package}: {name} is true")),
                Value::String(s) => add(s.to_string()),
                Value::Set(items) => items.iter().for_each(|v| add(as_text(v))),
                Value::Array(items) => items.iter().for_each(|v| add(as_text(v))),
                Value::Object(fields) => {
                    for (key, v) in fields.iter() {
                        if !matches!(v, Value::Bool(false) | Value::Null | Value::Undefined) {
                            add(as_text(key));
                        }
                    }
                }
                other => add(as_text(other)),
            }
        }
    }
}

/// A message as text: strings as they are, anything else as compact JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
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
