"""Checks that bench/render.py writes no figure of its own: every number of BENCHMARKS.md comes from the
run's JSON (a small fixture here) or from the hand-written files it copies verbatim.

Run by `make scripts-check` (a prerequisite of `make test`): python3 -m unittest discover -s bench
"""

import ast
import copy
import json
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import render  # noqa: E402

FIXTURE = os.path.join(HERE, "testdata", "results.json")
# Values that name runs rather than measure them (labels such as "digest h2 2000/s" are built from them):
# changing them changes which runs the report looks up, not a figure.
KEYS = {"rates", "target_rate", "cold_pod_sizes", "many_images", "label", "command", "flood"}
NUMBER = re.compile(r"\d")
# Digits that are names, not figures: section numbers, protocol versions, percentile columns.
LABELS = re.compile(r"^## \d+\.|^\| \d+ \||HTTP/1\.1|HTTP/2|\bp\d+(\.\d)?\b")


# Digits the renderer's code may hold: names (protocols, percentiles, crates, section numbers of the
# summary's first column) and the keys it looks figures up by (criterion ids, hyperfine command names).
CODE_LABELS = re.compile(r"(?<![A-Za-z])p\d+(\.\d)?(?!\d)|HTTP/1\.1|HTTP/2|(?<![A-Za-z])h[12](?!\d)|x509|X\.509|e2e|^\| \d \| |"
                         r"\\n\{\d,\}|RXG_BENCH_E2E_RUNS=0")
LOOKUP_KEYS = {"admission/cached review, 3 images by digest",
               "admission/cached review, 3 images by tag (3 registry HEADs)",
               "registryx-guard verify, 1 image", "registry_cpu_ms_1", "0", "2", "1.1"}


def fixture():
    with open(FIXTURE) as f:
        return json.load(f)


def without_code(line):
    return re.sub(r"`[^`]*`", "", line)


def shifted(value, counter):
    """`value` changed by a factor that differs from leaf to leaf, so that no ratio stays the same."""
    counter[0] += 1
    factor = 1 + 0.13 * (counter[0] % 7 + 1)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(int(value * factor), value + 1) if value else 0
    if isinstance(value, float):
        return value * factor
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return str(shifted(float(value) if "." in value else int(value), counter))
    if isinstance(value, str) and re.fullmatch(r"[\d.]+( [\d.]+)+", value):
        return " ".join(str(shifted(float(v), counter)) for v in value.split())
    if isinstance(value, str):  # versions, dates, commits: every digit another
        return re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), value)
    return value


def shift_all(data, counter=None):
    counter = counter or [0]
    if isinstance(data, dict):
        return {k: (v if k in KEYS else shift_all(v, counter)) for k, v in data.items()}
    if isinstance(data, list):
        return [shift_all(v, counter) for v in data]
    return shifted(data, counter)


class RenderTest(unittest.TestCase):
    def test_the_fixture_renders_with_every_placeholder_filled(self):
        text = render.render(fixture())
        self.assertNotIn("${", text)
        self.assertIn("## Summary", text)

    def test_the_template_holds_no_figure(self):
        with open(os.path.join(HERE, "BENCHMARKS.md.tmpl")) as f:
            template = f.read()
        in_code_block = False
        for line in template.splitlines():
            if line.startswith("```"):
                in_code_block = not in_code_block
                continue
            prose = re.sub(r"\$\{\w+\}", "", without_code(line))
            prose = re.sub(r"^## \d+\. ", "## ", prose)  # section numbers are names
            prose = re.sub(r"HTTP/[\d.]+", "HTTP", prose)  # so are protocol versions
            self.assertIsNone(NUMBER.search(prose), f"a figure in the template: {line!r}")

    def test_every_figure_follows_the_json(self):
        # Render the fixture, then the fixture with every figure changed: a line with a number that is
        # the same in both came from the renderer or the template, unless a hand-written file holds it.
        before = render.render(fixture()).splitlines()
        after = set(render.render(shift_all(fixture())).splitlines())
        verbatim = set()
        for name in ("bounds.md", "history.md", "soak-results.md", "cluster-results.md", "fuzz-results.md",
                     "attestation-results.md",
                     "cli-results.md"):
            verbatim |= set(render.include(name).splitlines())
        constant = [line for line in before if line in after and line not in verbatim
                    and NUMBER.search(LABELS.sub("", without_code(line)))]
        self.assertEqual(constant, [], "lines whose figures did not follow the JSON")

    def test_the_renderer_writes_no_figure_of_its_own(self):
        with open(os.path.join(HERE, "render.py")) as f:
            tree = ast.parse(f.read())
        specs = {id(n.format_spec) for n in ast.walk(tree) if isinstance(n, ast.FormattedValue) and n.format_spec}
        specs |= {id(c) for n in ast.walk(tree) if id(n) in specs for c in ast.walk(n)}
        found = [(n.lineno, n.value) for n in ast.walk(tree)
                 if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in specs
                 and n.value not in LOOKUP_KEYS and NUMBER.search(CODE_LABELS.sub("", n.value))
                 and not n.value.startswith("^")]  # the profile's symbol patterns
        self.assertEqual(found, [], "figures written in bench/render.py's text")

    def test_a_changed_figure_changes_the_report(self):
        data = fixture()
        data["memory"]["idle_rss_kib"] = str(31337 * 1024)
        data["config"]["target_rps"] = "12345"
        data["config"]["tag_cache_s"] = "17"
        data["machine"]["duration"] = "23"
        text = render.render(data)
        self.assertIn("| resident memory, idle | ≤ 64 MiB | 31337.0 MiB |", text)
        self.assertIn("≥ 12,345 reviews/s", text)
        self.assertIn("reused for 17 s", text)
        self.assertIn("over and over for 23 s", text)

    def test_history_is_copied_verbatim(self):
        data = copy.deepcopy(fixture())
        self.assertIn(render.include("history.md"), render.render(data))


if __name__ == "__main__":
    unittest.main()
