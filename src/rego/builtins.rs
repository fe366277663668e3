//! Bounded replacements for the regorus builtins whose cost is out of proportion to their arguments.
//!
//! regorus's execution timer is checked between interpreter steps, never inside a builtin.
//! `numbers.range(1, 100000000)` is a single step that fills a 2.4 GB array for five seconds before the
//! timer can fire, and `numbers.range(1, 1e12)` asks for terabytes, which aborts the process. regorus
//! looks extensions up before its builtins, so registering these under the builtins' names replaces
//! them for every policy: same results, but a range longer than [`MAX_RANGE_LEN`] is an error that the
//! policy layer reports as `RegoError::Limit`.

use anyhow::{anyhow, bail};
use regorus::{Engine, Value};

/// The longest range a policy may build. Ranges index arrays of images, containers or signatures;
/// a hundred thousand is far beyond those and still only milliseconds of work.
pub const MAX_RANGE_LEN: i128 = 100_000;

/// Marks errors raised by these replacements, so that the policy layer tells a limit from a bug.
pub(crate) const LIMIT_MARKER: &str = "registryx-guard limit:";

/// Registers the bounded builtins on `engine`.
pub(crate) fn register(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension("numbers.range".into(), 2, Box::new(range))?;
    engine.add_extension("numbers.range_step".into(), 3, Box::new(range_step))?;
    Ok(())
}

fn integer(name: &str, value: &Value) -> anyhow::Result<i64> {
    value
        .as_i64()
        .map_err(|_| anyhow!("{name}: operands must be integers, got {value}"))
}

/// `numbers.range(a, b)`: the integers from a to b, both included, descending when b < a.
fn range(args: Vec<Value>) -> anyhow::Result<Value> {
    let [a, b] = args.as_slice() else {
        bail!("numbers.range: expects 2 arguments");
    };
    let (a, b) = (integer("numbers.range", a)?, integer("numbers.range", b)?);
    stepped("numbers.range", a, b, 1)
}

/// `numbers.range_step(a, b, step)`: a, a±step, ... up to b, `step` positive.
fn range_step(args: Vec<Value>) -> anyhow::Result<Value> {
    let [a, b, step] = args.as_slice() else {
        bail!("numbers.range_step: expects 3 arguments");
    };
    let name = "numbers.range_step";
    let (a, b, step) = (integer(name, a)?, integer(name, b)?, integer(name, step)?);
    if step <= 0 {
        bail!("{name}: step must be a positive integer, got {step}");
    }
    stepped(name, a, b, step)
}

fn stepped(name: &str, a: i64, b: i64, step: i64) -> anyhow::Result<Value> {
    // i128 so that no pair of i64 bounds overflows.
    let (a, b, step) = (i128::from(a), i128::from(b), i128::from(step));
    let len = (b - a).abs() / step + 1;
    if len > MAX_RANGE_LEN {
        bail!(
            "{LIMIT_MARKER} {name} would build {len} numbers; registryx-guard allows at most {MAX_RANGE_LEN}"
        );
    }
    let signed_step = if b < a { -step } else { step };
    let values = (0..len)
        .map(|i| a + i * signed_step)
        .map(|n| Value::from(i64::try_from(n).unwrap_or_default()))
        .collect::<Vec<_>>();
    Ok(Value::from(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: Value) -> Vec<i64> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| x.as_i64().expect("an integer"))
            .collect()
    }

    #[test]
    fn ranges_match_opa() {
        assert_eq!(ints(stepped("r", 1, 4, 1).unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(ints(stepped("r", 4, 1, 1).unwrap()), vec![4, 3, 2, 1]);
        assert_eq!(ints(stepped("r", 3, 3, 1).unwrap()), vec![3]);
        assert_eq!(ints(stepped("r", 0, 10, 3).unwrap()), vec![0, 3, 6, 9]);
        assert_eq!(ints(stepped("r", 10, 0, 3).unwrap()), vec![10, 7, 4, 1]);
    }

    #[test]
    fn long_ranges_are_refused_without_allocating() {
        let err = stepped("numbers.range", i64::MIN, i64::MAX, 1).unwrap_err();
        assert!(err.to_string().starts_with(LIMIT_MARKER), "{err}");
        assert!(
            range_step(vec![
                Value::from(1i64),
                Value::from(5i64),
                Value::from(0i64)
            ])
            .is_err()
        );
    }
}
