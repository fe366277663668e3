//! The rooms of `src/` and which may use which: each module uses only the modules before it in
//! [`LAYERS`], so no arrow runs up and no two rooms import each other. README's "Rooms" section draws
//! the same order; a new module takes its place here.

use std::path::Path;

/// From the ground up: a module may name (`crate::x`) only modules listed before it.
const LAYERS: [&str; 15] = [
    // Ground: foreign text made safe, logging, the crypto provider.
    "untrusted",
    "telemetry",
    "tls",
    // The Rego engine (knows nothing of policies or signatures).
    "rego",
    // References and the OCI distribution API, RegistryX's REST API.
    "registry",
    // Why an image is refused, and the remedy.
    "refusal",
    // The library's error type.
    "error",
    // The resources, compiled into snapshots.
    "policy",
    // Signatures found and checked.
    "verify",
    // Policies reconciled into status and the snapshot.
    "controller",
    // Rego on the evidence.
    "decide",
    // One review decided.
    "admission",
    // What already runs, re-checked against today's policies and reported (PolicyReports).
    "audit",
    // HTTP, TLS, probes, push events.
    "server",
    // The command line.
    "cli",
];

/// The first identifier of `text`.
fn identifier(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// `crate::name` (and each name of `crate::{a, b::c}`) on a line of code; comments are left out: a
/// doc link is no import.
fn named_modules(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or_default();
    let mut named = Vec::new();
    // `$crate::` belongs to macros, not to this crate's rooms.
    for (at, found) in code.match_indices("crate::") {
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + found.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or_default();
                named.extend(group.split(',').map(identifier).filter(|n| !n.is_empty()));
            }
            None => named.push(identifier(rest)),
        }
    }
    named
}

fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_rooms_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut unlisted = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue; // the crate root declares the rooms; main is the binary over the library
        }
        let Some(rank) = LAYERS.iter().position(|m| *m == module) else {
            unlisted.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for named in named_modules(line) {
                if named == "Error" || named == "Result" {
                    continue; // the crate's error type, re-exported at the root from `error`
                }
                match LAYERS.iter().position(|m| *m == named) {
                    Some(used) if used <= rank => {}
                    Some(_) => upward.push(format!(
                        "{}:{}: {module} uses {named}",
                        file.strip_prefix(&src).unwrap().display(),
                        number + 1
                    )),
                    None => unlisted.push(named.to_owned()),
                }
            }
        }
    }
    unlisted.sort();
    unlisted.dedup();
    assert!(
        unlisted.is_empty(),
        "modules missing from LAYERS: {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "arrows that run up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn a_use_that_runs_up_is_seen() {
    assert_eq!(
        named_modules("use crate::admission::Workload; // crate::cli in a comment"),
        ["admission"]
    );
    assert_eq!(
        named_modules("    let x = crate::verify::Verifier::new(crate::policy::x());"),
        ["verify", "policy"]
    );
    assert_eq!(
        named_modules("use crate::{Error, server::ServeArgs};"),
        ["Error", "server"]
    );
}
