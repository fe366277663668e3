//! Static checks on parsed Rego modules, run before regorus prepares them, that keep an evaluation from
//! overflowing the stack of the thread that runs it.
//!
//! regorus's interpreter (and its analyzer) recurse on the Rust stack once per nested expression and
//! once per rule or function they enter, with no depth limit of their own. Its execution timer cannot
//! help: a recursive function (`f(n) := f(n - 1)`) overflows an 8 MiB stack within microseconds, and a
//! stack overflow aborts the whole webhook process. So, as OPA does at compile time:
//!
//! - **recursion is refused**: a rule or function that can reach itself through references or calls is
//!   a compile error;
//! - **nesting is bounded**: every rule gets a weight, the deepest chain of nested expressions and of
//!   rules and functions it reaches, and a policy whose heaviest rule exceeds [`MAX_EVAL_DEPTH`] is
//!   refused. The bound is calibrated on the heaviest accepted policy of every shape `tests/rego.rs`
//!   builds (chains of functions, rules, comprehensions, `every`/`with`, arithmetic): each compiles and
//!   evaluates within 512 KiB of stack, debug and release builds alike, a quarter of the 2 MiB tokio
//!   gives its worker threads (the test checks 1 MiB). That still admits 65 nested rule or function
//!   calls, far beyond real policies.
//!
//! The dependency graph over-approximates (a reference with a dynamic part, `data.pkg[x]`, depends on
//! every rule under `data.pkg`; a local variable that shadows a rule name declared with `=` counts as a
//! reference to the rule), as OPA's own recursion check does. Everything here is iterative or bounded
//! by [`MAX_EVAL_DEPTH`]: the analysis must not be the thing that overflows on a hostile module.
//!
//! This reads regorus's AST (`regorus::unstable`), which regorus does not promise to keep stable; the
//! lock file pins the version, and a change breaks the build rather than the check.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{AssignOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead};

use super::error::{RegoError, SourceLocation};

/// The heaviest rule weight accepted (see the module docs). One unit is one level of AST nesting; each
/// rule or function entered costs `CALL_COST` (8) more, for the frames regorus spends entering it.
pub const MAX_EVAL_DEPTH: u32 = 600;

/// What entering a rule or a function costs, in AST levels, on regorus's stack (measured: a chain of
/// one-line functions uses about as much stack per link as eight levels of nested expressions).
const CALL_COST: u32 = 8;

/// A path below `data`, one component per segment: `["registry", "deny"]`.
pub(crate) type DataPath = Vec<String>;

/// What the checks learned about the modules, for the caller to decide which rules to query.
#[derive(Debug, Default)]
pub(crate) struct Outline {
    /// Every rule and function, with whether it is a function.
    pub rules: BTreeMap<DataPath, bool>,
    /// Every package.
    pub packages: BTreeSet<DataPath>,
    /// Each module's package and the rules it defines (with the line of each), index for index with
    /// the modules: which module to name when a rule is never read.
    pub modules: Vec<ModuleOutline>,
    /// For every rule, the rules its definitions may evaluate (the same over-approximation as the
    /// recursion check): what a decision rule reaches is what the engine ever evaluates.
    pub references: BTreeMap<DataPath, BTreeSet<DataPath>>,
}

/// One module, as far as deciding which of its rules are ever read goes.
#[derive(Debug, Default)]
pub(crate) struct ModuleOutline {
    pub package: DataPath,
    /// The line of the `package` declaration.
    pub package_line: u32,
    /// (rule path below `data`, line of its first definition in this module).
    pub rules: Vec<(DataPath, u32)>,
}

impl Outline {
    /// Every rule that evaluating `roots` may evaluate, `roots` included.
    pub fn reachable(&self, roots: &[DataPath]) -> BTreeSet<DataPath> {
        let mut seen: BTreeSet<DataPath> = BTreeSet::new();
        let mut pending: Vec<DataPath> = roots.to_vec();
        while let Some(path) = pending.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            if let Some(targets) = self.references.get(&path) {
                pending.extend(targets.iter().filter(|t| !seen.contains(*t)).cloned());
            }
        }
        seen
    }
}

struct Node {
    path: DataPath,
    module: usize,
    line: u32,
    /// The deepest AST nesting within the rule's own definitions.
    own_depth: u32,
    /// (target node, AST depth of the reference or call).
    edges: BTreeMap<usize, u32>,
}

/// Checks `modules` (named by `names`, index for index) for recursion and excessive nesting.
pub(crate) fn check(modules: &[Ref<Module>], names: &[String]) -> Result<Outline, RegoError> {
    let module_name = |index: usize| names.get(index).cloned().unwrap_or_default();
    let mut outline = Outline::default();
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: BTreeMap<DataPath, usize> = BTreeMap::new();

    // Pass 1: every rule and function becomes a node (several definitions of one rule share it).
    let mut packages = Vec::with_capacity(modules.len());
    for (module_index, module) in modules.iter().enumerate() {
        let package = static_path(&module.package.refr).ok_or_else(|| RegoError::Compile {
            location: Some(SourceLocation {
                module: module_name(module_index),
                line: Some(module.package.span.line),
                column: Some(module.package.span.col),
            }),
            message: "the package name must be a static path".into(),
        })?;
        outline.packages.insert(package.clone());
        let mut described = ModuleOutline {
            package: package.clone(),
            package_line: module.package.span.line,
            rules: Vec::new(),
        };
        for rule in &module.policy {
            let (head, is_function) = rule_head(rule);
            let mut path = package.clone();
            path.extend(head);
            if !described.rules.iter().any(|(p, _)| *p == path) {
                described.rules.push((path.clone(), rule.span().line));
            }
            let next = nodes.len();
            let node = *index.entry(path.clone()).or_insert(next);
            if node == next {
                nodes.push(Node {
                    path: path.clone(),
                    module: module_index,
                    line: rule.span().line,
                    own_depth: 0,
                    edges: BTreeMap::new(),
                });
            }
            outline.rules.insert(path, is_function);
        }
        outline.modules.push(described);
        packages.push(package);
    }

    // Pass 2: walk every definition, recording where it refers to other rules and calls functions.
    for (module_index, module) in modules.iter().enumerate() {
        let package = &packages[module_index];
        let imports = imports_of(module);
        for rule in &module.policy {
            let (head, _) = rule_head(rule);
            let mut path = package.clone();
            path.extend(head);
            let Some(&node) = index.get(&path) else {
                continue;
            };
            let mut walk = Walk::default();
            walk.rule(rule);
            if walk.overflow {
                return Err(too_deep(&nodes[node], names, walk.max_depth));
            }
            let mut edges = Vec::new();
            for site in &walk.sites {
                let Some(target) = resolve(site, package, &imports, &walk.locals) else {
                    continue;
                };
                if site.is_call {
                    if let Some(&callee) = index.get(&target) {
                        edges.push((callee, site.depth));
                    }
                } else {
                    for related in related_nodes(&index, &target) {
                        edges.push((related, site.depth));
                    }
                }
            }
            let entry = &mut nodes[node];
            entry.own_depth = entry.own_depth.max(walk.max_depth);
            for (target, depth) in edges {
                let slot = entry.edges.entry(target).or_insert(0);
                *slot = (*slot).max(depth);
            }
        }
    }

    let order = topological_order(&nodes).map_err(|cycle| {
        let first = cycle.first().and_then(|&n| nodes.get(n));
        RegoError::Recursion {
            location: SourceLocation {
                module: first.map(|n| module_name(n.module)).unwrap_or_default(),
                line: first.map(|n| n.line),
                column: None,
            },
            cycle: cycle.iter().map(|&n| data_ref(&nodes[n].path)).collect(),
        }
    })?;

    // Weights in reverse topological order: every target's weight is known when its referrer's is.
    let mut weight = vec![0u32; nodes.len()];
    for &n in order.iter().rev() {
        let node = &nodes[n];
        let mut w = node.own_depth;
        for (&target, &depth) in &node.edges {
            w = w.max(
                depth
                    .saturating_add(CALL_COST)
                    .saturating_add(weight[target]),
            );
        }
        if w > MAX_EVAL_DEPTH {
            return Err(too_deep(node, names, w));
        }
        weight[n] = w;
    }
    for node in &nodes {
        let targets = node
            .edges
            .keys()
            .map(|&target| nodes[target].path.clone())
            .collect();
        outline.references.insert(node.path.clone(), targets);
    }
    Ok(outline)
}

fn too_deep(node: &Node, names: &[String], depth: u32) -> RegoError {
    RegoError::TooDeep {
        location: SourceLocation {
            module: names.get(node.module).cloned().unwrap_or_default(),
            line: Some(node.line),
            column: None,
        },
        rule: data_ref(&node.path),
        depth,
        limit: MAX_EVAL_DEPTH,
    }
}

/// `data.registry.deny`, for messages.
pub(crate) fn data_ref(path: &[String]) -> String {
    let mut text = String::from("data");
    for component in path {
        if !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !component.starts_with(|c: char| c.is_ascii_digit())
        {
            text.push('.');
            text.push_str(component);
        } else {
            text.push_str(&format!("[{component:?}]"));
        }
    }
    text
}

/// Kahn's algorithm; on a cycle, returns one cycle's nodes, in reference order.
fn topological_order(nodes: &[Node]) -> Result<Vec<usize>, Vec<usize>> {
    let mut indegree = vec![0usize; nodes.len()];
    for node in nodes {
        for &target in node.edges.keys() {
            indegree[target] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&n| indegree[n] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(n) = ready.pop() {
        order.push(n);
        for &target in nodes[n].edges.keys() {
            indegree[target] -= 1;
            if indegree[target] == 0 {
                ready.push(target);
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Every node left has a predecessor that is left too; walking predecessors must revisit a node, and
    // the walk from that node's first visit on is a cycle (walked backwards).
    let left: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    let mut predecessor = vec![None; nodes.len()];
    for (n, node) in nodes.iter().enumerate() {
        if !left[n] {
            continue;
        }
        for &target in node.edges.keys() {
            if left[target] && predecessor[target].is_none() {
                predecessor[target] = Some(n);
            }
        }
    }
    let start = left.iter().position(|&l| l).unwrap_or(0);
    let mut seen = vec![usize::MAX; nodes.len()];
    let mut walk = Vec::new();
    let mut current = start;
    while seen[current] == usize::MAX {
        seen[current] = walk.len();
        walk.push(current);
        match predecessor[current] {
            Some(p) => current = p,
            None => break,
        }
    }
    let from = if seen[current] == usize::MAX {
        0
    } else {
        seen[current]
    };
    let mut cycle: Vec<usize> = walk[from..].to_vec();
    cycle.reverse();
    if let Some(&first) = cycle.first() {
        cycle.push(first);
    }
    Err(cycle)
}

/// The rule's path below its package, and whether it is a function. A rule head such as `deny[msg]` or
/// `a.b[x]` is named by its static prefix (`deny`, `a.b`).
fn rule_head(rule: &Rule) -> (DataPath, bool) {
    match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => {
                (static_prefix(refr), false)
            }
            RuleHead::Func { refr, .. } => (static_prefix(refr), true),
        },
        Rule::Default { refr, args, .. } => (static_prefix(refr), !args.is_empty()),
    }
}

/// The components of a reference that are all static (`a.b["c"]`), or None if any is not.
fn static_path(expr: &Expr) -> Option<DataPath> {
    let (root, components) = flatten(expr);
    let mut path = vec![var_name(root)?];
    for component in components {
        path.push(component.name?);
    }
    Some(path)
}

/// The static prefix of a reference: `deny[msg]` -> `deny`, `a.b[x].c` -> `a.b`.
fn static_prefix(expr: &Expr) -> DataPath {
    let (root, components) = flatten(expr);
    let mut path = Vec::new();
    if let Some(name) = var_name(root) {
        path.push(name);
        for component in components {
            match component.name {
                Some(name) => path.push(name),
                None => break,
            }
        }
    }
    path
}

fn var_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

struct Component<'a> {
    /// The component's name when static (`.b`, `["b"]`).
    name: Option<String>,
    /// The index expression when dynamic (`[x]`).
    index: Option<&'a Expr>,
}

/// Unrolls `a.b[c].d` into its root (`a`) and its components, iteratively.
fn flatten(expr: &Expr) -> (&Expr, Vec<Component<'_>>) {
    let mut components = Vec::new();
    let mut current = expr;
    loop {
        match current {
            Expr::RefDot { refr, field, .. } => {
                components.push(Component {
                    name: field.1.as_string().ok().map(|s| s.to_string()),
                    index: None,
                });
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                let name = match &**index {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        value.as_string().ok().map(|s| s.to_string())
                    }
                    _ => None,
                };
                components.push(Component {
                    index: if name.is_none() { Some(index) } else { None },
                    name,
                });
                current = refr;
            }
            _ => break,
        }
    }
    components.reverse();
    (current, components)
}

/// What a name at the root of a reference may be bound to by an import.
enum ImportTarget {
    Data(DataPath),
    Input,
}

fn imports_of(module: &Module) -> BTreeMap<String, ImportTarget> {
    let mut imports = BTreeMap::new();
    for import in &module.imports {
        let (root, components) = flatten(&import.refr);
        let Some(root) = var_name(root) else {
            continue;
        };
        let path: DataPath = components.into_iter().filter_map(|c| c.name).collect();
        let alias = match &import.r#as {
            Some(span) => span.text().to_string(),
            None => match path.last() {
                Some(last) => last.clone(),
                None => root.clone(),
            },
        };
        let target = match root.as_str() {
            "data" => ImportTarget::Data(path),
            "input" => ImportTarget::Input,
            // future.keywords and rego.v1 bind no name.
            _ => continue,
        };
        imports.insert(alias, target);
    }
    imports
}

/// A place where a definition refers to something by name.
struct Site {
    root: String,
    /// The static components after the root, up to the first dynamic one.
    components: DataPath,
    is_call: bool,
    depth: u32,
}

/// The full data path a site refers to, or None when it refers to input, a local variable or nothing
/// the policy defines.
fn resolve(
    site: &Site,
    package: &DataPath,
    imports: &BTreeMap<String, ImportTarget>,
    locals: &BTreeSet<String>,
) -> Option<DataPath> {
    let mut path = match site.root.as_str() {
        "data" => Vec::new(),
        "input" => return None,
        root => match imports.get(root) {
            Some(ImportTarget::Data(target)) => target.clone(),
            Some(ImportTarget::Input) => return None,
            None if locals.contains(root) => return None,
            None => {
                let mut path = package.clone();
                path.push(root.to_string());
                path
            }
        },
    };
    path.extend(site.components.iter().cloned());
    Some(path)
}

/// Nodes a reference to `target` may evaluate: those on its path (a rule the reference reads into) and
/// those below it (a reference to a whole package or to a rule's prefix).
fn related_nodes(index: &BTreeMap<DataPath, usize>, target: &DataPath) -> Vec<usize> {
    let mut related = Vec::new();
    for len in 1..target.len() {
        if let Some(&n) = index.get(&target[..len]) {
            related.push(n);
        }
    }
    for (path, &n) in index.range(target.clone()..) {
        if !path.starts_with(target) {
            break;
        }
        related.push(n);
    }
    related
}

/// One definition's walk: its reference sites, local variable names and deepest nesting. Recursion
/// stops past [`MAX_EVAL_DEPTH`], so the walk itself uses a bounded stack.
#[derive(Default)]
struct Walk {
    sites: Vec<Site>,
    locals: BTreeSet<String>,
    max_depth: u32,
    overflow: bool,
}

impl Walk {
    fn enter(&mut self, depth: u32) -> bool {
        self.max_depth = self.max_depth.max(depth);
        if depth > MAX_EVAL_DEPTH {
            self.overflow = true;
        }
        !self.overflow
    }

    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.head_ref(refr, 1);
                        if let Some(assign) = assign {
                            self.expr(&assign.value, 1);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.head_ref(refr, 1);
                        if let Some(key) = key {
                            self.expr(key, 1);
                        }
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        self.head_ref(refr, 1);
                        for arg in args {
                            self.declare(arg);
                            self.expr(arg, 1);
                        }
                        if let Some(assign) = assign {
                            self.expr(&assign.value, 1);
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        self.expr(&assign.value, 1);
                    }
                    self.query(&body.query, 1);
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                self.head_ref(refr, 1);
                for arg in args {
                    self.declare(arg);
                }
                self.expr(value, 1);
            }
        }
    }

    /// A rule head names the rule itself, which is no reference; only its dynamic indexes are walked.
    fn head_ref(&mut self, refr: &Expr, depth: u32) {
        let (_, components) = flatten(refr);
        for component in components {
            if let Some(index) = component.index {
                self.expr(index, depth + 1);
            }
        }
    }

    fn query(&mut self, query: &Query, depth: u32) {
        if !self.enter(depth) {
            return;
        }
        for stmt in &query.stmts {
            self.stmt(stmt, depth + 1);
        }
    }

    fn stmt(&mut self, stmt: &LiteralStmt, depth: u32) {
        if !self.enter(depth) {
            return;
        }
        let inner = depth + 1;
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => {
                for var in vars {
                    self.locals.insert(var.text().to_string());
                }
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(key) = key {
                    self.declare(key);
                    self.expr(key, inner);
                }
                self.declare(value);
                self.expr(value, inner);
                self.expr(collection, inner);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr, inner),
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                if let Some(key) = key {
                    self.locals.insert(key.text().to_string());
                }
                self.locals.insert(value.text().to_string());
                self.expr(domain, inner);
                self.query(query, inner);
            }
        }
        for modifier in &stmt.with_mods {
            // `with data.x as v` names the document it replaces: that is no evaluation of it.
            self.expr(&modifier.r#as, inner);
        }
    }

    /// Records the variables a pattern binds (`x`, `[x, y]`, `{"k": x}`) as local names.
    fn declare(&mut self, pattern: &Expr) {
        let mut pending = vec![pattern];
        while let Some(expr) = pending.pop() {
            match expr {
                Expr::Var { value, .. } => {
                    if let Ok(name) = value.as_string() {
                        self.locals.insert(name.to_string());
                    }
                }
                Expr::Array { items, .. } => pending.extend(items.iter().map(|i| &**i)),
                Expr::Object { fields, .. } => pending.extend(fields.iter().map(|(_, _, v)| &**v)),
                _ => {}
            }
        }
    }

    fn expr(&mut self, expr: &Expr, depth: u32) {
        if !self.enter(depth) {
            return;
        }
        let inner = depth + 1;
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                self.reference(expr, depth, false)
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for item in items {
                    self.expr(item, inner);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, key, value) in fields {
                    self.expr(key, inner);
                    self.expr(value, inner);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(query, inner);
                self.expr(term, inner);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.query(query, inner);
                self.expr(key, inner);
                self.expr(value, inner);
            }
            Expr::Call { fcn, params, .. } => {
                self.reference(fcn, depth, true);
                for param in params {
                    self.expr(param, inner);
                }
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr, inner),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. } => {
                self.expr(lhs, inner);
                self.expr(rhs, inner);
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                if *op == AssignOp::ColEq {
                    self.declare(lhs);
                }
                self.expr(lhs, inner);
                self.expr(rhs, inner);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(key) = key {
                    self.expr(key, inner);
                }
                self.expr(value, inner);
                self.expr(collection, inner);
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// A reference (`a.b[c]`) or a call's function name: one site for its root, and a walk of every
    /// dynamic index and of a root that is itself an expression (`f(x).y`).
    fn reference(&mut self, expr: &Expr, depth: u32, is_call: bool) {
        let (root, components) = flatten(expr);
        let inner = depth + 1;
        match var_name(root) {
            Some(name) => {
                let static_components = components
                    .iter()
                    .map_while(|c| c.name.clone())
                    .collect::<DataPath>();
                self.sites.push(Site {
                    root: name,
                    components: static_components,
                    is_call,
                    depth,
                });
            }
            None => self.expr(root, inner),
        }
        for component in components {
            if let Some(index) = component.index {
                self.expr(index, inner);
            }
        }
    }
}
