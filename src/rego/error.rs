//! Errors of the Rego capability, and the conversion of regorus's multi-line diagnostics into one line
//! that still names the module, line and column.

use std::fmt;
use std::time::Duration;

/// Where in the policy's Rego source something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The module's name, as given in `spec.rego.modules[].name`.
    pub module: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "module {:?}", self.module)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " line {line}, column {column}"),
            (Some(line), None) => write!(f, " line {line}"),
            _ => Ok(()),
        }
    }
}

/// Which Rego syntax a module was read as when it failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegoSyntax {
    /// `deny contains msg if { ... }` (OPA 1.0, or any module with `import rego.v1`).
    V1,
    /// `deny[msg] { ... }` (OPA 0.x, what RegistryX's editor writes).
    V0,
}

impl fmt::Display for RegoSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegoSyntax::V1 => "Rego v1",
            RegoSyntax::V0 => "Rego v0",
        })
    }
}

/// Everything that can go wrong compiling or evaluating Rego rules. Every variant refuses: a caller must
/// never treat an error as "allowed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegoError {
    #[error("two Rego modules are named {module:?}; module names must be unique")]
    DuplicateModule { module: String },

    /// The module parses neither as Rego v1 nor as Rego v0; `syntax` is the reading that got further.
    #[error("{location}: {message} (read as {syntax})")]
    Syntax {
        location: SourceLocation,
        message: String,
        syntax: RegoSyntax,
    },

    /// The modules parse but do not form a valid policy (an unsafe variable, an unknown import, a
    /// decision rule defined in a way the webhook cannot read, ...).
    #[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Compile {
        location: Option<SourceLocation>,
        message: String,
    },

    /// The modules define no rule the engine reads as a decision (a package or rule name off by a typo,
    /// OPA's `kubernetes.admission`), or define decision-like rules that nothing the engine reads ever
    /// evaluates: a policy whose text says "deny" but that can never refuse is not Ready.
    #[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Undecided {
        location: Option<SourceLocation>,
        message: String,
    },

    /// Rego forbids recursion (OPA rejects it at compile time too); regorus would otherwise recurse until
    /// the process's stack overflows.
    #[error("{location}: {} is recursive: {} (Rego forbids recursion)", cycle.first().map(String::as_str).unwrap_or("a rule"), cycle.join(" -> "))]
    Recursion {
        location: SourceLocation,
        cycle: Vec<String>,
    },

    /// Rules calling rules nest deeper than evaluation may go without risking the stack of the thread that
    /// evaluates them.
    #[error(
        "{location}: {rule} nests rule references, function calls and expressions {depth} levels deep; the limit is {limit}"
    )]
    TooDeep {
        location: SourceLocation,
        rule: String,
        depth: u32,
        limit: u32,
    },

    /// Evaluation ran out of its time budget (`RegoPolicy::with_time_limit`).
    #[error("evaluating {rule} exceeded the Rego time limit of {limit:?}")]
    Timeout { rule: String, limit: Duration },

    /// Evaluation hit a size limit (a `numbers.range` too long, regorus's regex size limit, ...).
    #[error("evaluating {rule}: {message}")]
    Limit { rule: String, message: String },

    /// The rules failed at run time: a type error, a division by zero, a builtin that errors.
    #[error("evaluating {rule}: {}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Evaluation {
        rule: String,
        location: Option<SourceLocation>,
        message: String,
    },

    /// The input document could not be handed to regorus.
    #[error("the Rego input is not a JSON document regorus accepts: {0}")]
    Input(String),

    /// regorus panicked; the panic was contained, and the evaluation refuses.
    #[error("regorus failed internally while {during}: {message}")]
    Internal { during: String, message: String },
}

/// A regorus diagnostic reduced to one readable line.
pub(crate) struct Diagnostic {
    pub location: Option<SourceLocation>,
    pub message: String,
}

/// regorus reports errors as
///
/// ```text
/// \n--> file:line:col\n  |\nN | source line\n  |   ^\nerror: what went wrong
/// ```
///
/// which reads well on a terminal but not in a Kubernetes status condition or an admission message. Keep
/// the location and the last line's text, and quote the offending source line, all on one line.
pub(crate) fn condense(raw: &str) -> Diagnostic {
    let mut location = None;
    let mut source_line = None;
    let mut message = None;
    let mut lines = raw.lines().map(str::trim_end).peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if location.is_none()
            && let Some(rest) = trimmed.strip_prefix("--> ")
        {
            location = parse_location(rest);
            continue;
        }
        if location.is_some() && source_line.is_none() {
            // "N | text" right after the location names the offending line.
            if let Some((number, text)) = trimmed.split_once(" | ")
                && number.trim().parse::<u32>().is_ok()
            {
                source_line = Some(text.trim().to_string());
                continue;
            }
        }
        if let Some(rest) = trimmed.strip_prefix("error: ") {
            // Keep everything from the first "error:" on; nested diagnostics (a cycle regorus found)
            // follow it and are flattened to one line.
            let mut text = rest.trim().to_string();
            for more in lines.by_ref() {
                let more = more.trim();
                if !more.is_empty() && more != "|" {
                    text.push(' ');
                    text.push_str(more);
                }
            }
            message = Some(text);
            break;
        }
    }
    let message = match message {
        Some(text) => match source_line {
            Some(source) if !source.is_empty() => format!("{text} (at `{source}`)"),
            _ => text,
        },
        None => raw.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    Diagnostic { location, message }
}

/// `name:line:col`, where the name itself may contain colons.
fn parse_location(text: &str) -> Option<SourceLocation> {
    let mut parts = text.trim().rsplitn(3, ':');
    let column = parts.next()?.parse::<u32>().ok()?;
    let line = parts.next()?.parse::<u32>().ok()?;
    let module = parts.next()?.to_string();
    Some(SourceLocation {
        module,
        line: Some(line),
        column: Some(column),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condenses_a_regorus_diagnostic() {
        let raw = "\n--> team:policy.rego:3:11\n  |\n3 | deny[msg] {\n  |           ^\nerror: `if` keyword is required before rule body";
        let d = condense(raw);
        let location = d.location.expect("a location");
        assert_eq!(location.module, "team:policy.rego");
        assert_eq!((location.line, location.column), (Some(3), Some(11)));
        assert_eq!(
            d.message,
            "`if` keyword is required before rule body (at `deny[msg] {`)"
        );
    }

    #[test]
    fn keeps_a_message_without_location() {
        let d = condense("m.rego exceeds maximum allowed line count 20000");
        assert!(d.location.is_none());
        assert_eq!(d.message, "m.rego exceeds maximum allowed line count 20000");
    }
}
