//! A policy's Rego modules, compiled once into a prepared regorus engine, and the decision read from
//! them for one input document.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};
use serde::Deserialize;

use super::analysis;
use super::builtins;
use super::decisions::{DecisionKind, DecisionRule, check_decides, decision_rules};
use super::error::{RegoError, RegoSyntax, SourceLocation, condense};

/// How long one evaluation (all decision rules of one input) may run by default.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);

/// Work units (interpreter steps) between two reads of the clock. A step is one statement or
/// expression, well under a microsecond for the policies this runs, so 16 keeps the overrun of the
/// budget in microseconds while sparing most clock reads.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(16).unwrap();

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
/// packages in [`DECISION_PACKAGES`](super::DECISION_PACKAGES) (other packages serve as libraries; modules that cannot decide are
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
