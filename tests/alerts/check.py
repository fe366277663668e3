"""What promtool does not check of the chart's alert rules (make alerts-check).

    helm template ... --set monitoring.prometheusRule.enabled=true | python3 check.py RULES TESTS

1. The rendered PrometheusRule's spec holds exactly the groups of RULES (files/alerts.yaml): the
   template ships the file that promtool tested, not a copy that drifted or a render that mangled it.
2. TESTS (promtool's test file) has, for every alert of RULES, a case where it fires and one where it
   does not: promtool passes a rule that no test mentions.
Exits 1 with what is wrong.
"""

import sys

import yaml


def main(rules_path, tests_path, rendered):
    with open(rules_path) as f:
        groups = yaml.safe_load(f)["groups"]
    with open(tests_path) as f:
        tests = yaml.safe_load(f)["tests"]
    problems = []

    rules = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc.get("kind") == "PrometheusRule"
    ]
    if len(rules) != 1:
        problems.append(f"expected one PrometheusRule in the rendered chart, found {len(rules)}")
    elif rules[0]["spec"] != {"groups": groups}:
        problems.append(f"the PrometheusRule's spec differs from {rules_path}")

    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    if not alerts:
        problems.append(f"no alert in {rules_path}")
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in sorted(alerts):
        outcomes = {bool(case.get("exp_alerts")) for case in cases if case["alertname"] == alert}
        if True not in outcomes:
            problems.append(f"{alert}: no case in {tests_path} where it fires")
        if False not in outcomes:
            problems.append(f"{alert}: no case in {tests_path} where it stays quiet")

    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"PrometheusRule = {rules_path}; {len(alerts)} alerts, each firing and quiet in {tests_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.stdin.read()))
