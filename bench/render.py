#!/usr/bin/env python3
"""BENCHMARKS.md from one `bench/run.sh` run, in two steps that keep the figures apart from the prose.

    render.py collect RESULTS_DIR REPO_ROOT > results.json   # the run's raw results as one JSON
    render.py render results.json > BENCHMARKS.md             # bench/BENCHMARKS.md.tmpl filled from it

`collect` gathers every figure of the run (and criterion's estimates under target/criterion) and what the
run set (RESULTS_DIR/config.env: load shapes, targets, the server defaults the text relies on). `render`
fills the template's `${name}` placeholders with blocks built from that JSON only: no figure is written
here or in the template. Comparisons with earlier runs live in bench/history.md, and the hand-written
sections (bench/bounds.md, the soak, cluster, fuzz and attestation results) are copied verbatim.
"""

import glob
import json
import os
import re
import statistics
import string
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------------------------------
# collect


def collect(results, root):
    def path(name):
        return os.path.join(results, name)

    def env(name):
        values = {}
        if os.path.exists(path(name)):
            for line in open(path(name)):
                key, _, value = line.strip().partition("=")
                if key:
                    values[key] = value
        return values

    def jsonl(name):
        if not os.path.exists(path(name)):
            return []
        return [json.loads(line) for line in open(path(name)) if line.strip()]

    def load_json(name):
        return json.load(open(path(name))) if os.path.exists(path(name)) else None

    def text(name):
        return open(path(name)).read() if os.path.exists(path(name)) else None

    criterion = {}
    for bench in glob.glob(os.path.join(root, "target/criterion/**/new/benchmark.json"), recursive=True):
        meta = json.load(open(bench))
        estimates = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
        criterion[meta["full_id"]] = {"mean_ns": estimates["mean"]["point_estimate"]}
    e2e = []
    for line in (text("e2e.txt") or "").splitlines():
        m = re.search(r"([\d.]+)(ms|s|µs)\s*$", line.strip())
        if m:
            value = float(m.group(1))
            e2e.append(value / 1000 if m.group(2) == "ms" else value / 1e6 if m.group(2) == "µs" else value)
    return {
        "config": env("config.env"),
        "machine": env("machine.env"),
        "memory": env("memory.env"),
        "many_cpu": env("many.env"),
        "loads": jsonl("load.jsonl"),
        "cold": jsonl("cold.jsonl"),
        "cold_pods": jsonl("cold-pods.jsonl"),
        "crowds": jsonl("crowd.jsonl"),
        "fill": load_json("fill.json"),
        "fill_verified": load_json("fill-verified.json"),
        "profiled": load_json("profiled.json"),
        "policy_dir": load_json("policy-dir.json"),
        "hyperfine": {name: load_json(f"hyperfine-{name}.json")
                      for name in ("legacy", "bundle", "many", "startup") if load_json(f"hyperfine-{name}.json")},
        "criterion": criterion,
        "perf": perf_rows(text("perf.txt")),
        "perf_cli": perf_rows(text("perf-cli.txt")),
        "e2e_s": e2e,
        "peers_skipped": (text("peers-skipped.txt") or "").splitlines(),
        "commands": (text("commands.txt") or "").splitlines(),
    }


def perf_rows(report):
    rows = []
    for line in (report or "").splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*(?:-\s+-\s*)?$", line)
        if m:
            rows.append([float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()])
    return rows


# --------------------------------------------------------------------------------------------------
# render: helpers


def ms(us):
    return f"{us / 1000:.2f}"


def mib(kib):
    return f"{int(kib) / 1024:.1f}"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def fmt_int(n):
    return f"{int(round(float(n))):,}"


def crit_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def num(value):
    """A config value as written in config.env, or as a number when it is one."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() else f


CATEGORIES = [
    ("regex (policy globs and identities; references use none)", r"^<?(regex_automata|regex_syntax|regex|aho_corasick)::"),
    ("certificates (root store, X.509, PEM, DER)", r"^<?(webpki|rustls_pki_types|rustls_native_certs|rustls_platform_verifier|x509|der|pem|spki|openssl_probe|untrusted)(::|_)"),
    ("TLS records and handshakes (rustls)", r"^<?rustls(::|_)|^<?tokio_rustls"),
    ("crypto (aws-lc)", r"^aws_lc|^<?aws_lc"),
    ("JSON (serde_json)", r"^<?serde_json|^<?serde::|^<?serde_core"),
    ("HTTP (hyper, h2, axum, tower)", r"^<?(hyper|h2|http|httparse|axum|tower|matchit)(::|_)"),
    ("async runtime (tokio, futures)", r"^<?(tokio|mio|futures)"),
    ("verification cache (moka)", r"^<?(moka|crossbeam|quanta)"),
    ("metrics (prometheus-client)", r"^<?prometheus_client"),
    ("logging (tracing)", r"^<?tracing"),
    ("YAML, CLI (serde_yaml, clap)", r"^<?(serde_yaml|unsafe_libyaml|clap)"),
    ("policy globs (globset)", r"^<?globset"),
    ("registryx-guard's own code", r"^<?registryx_guard"),
    ("memory allocation (mimalloc, glibc malloc)", r"^(_?mi_|mi_|_int_|malloc|cfree|free|realloc|calloc|__libc_malloc|__libc_free|_mid_memalign|tcache|unlink_chunk|malloc_consolidate)"),
    ("memcpy, memmove, memcmp (glibc)", r"^__(mem|str)"),
    ("Rust standard library", r"^<?(core|alloc|std)(::|_)"),
]
KERNEL = "kernel (network stack, scheduler, syscalls)"
# Longer symbols (C++-like generic paths) are cut to keep the table readable.
SYMBOL_WIDTH = 110


def categorize(dso, kind, symbol):
    if kind == "k" or dso.startswith("[kernel"):
        return KERNEL
    for name, pattern in CATEGORIES:
        if re.search(pattern, symbol):
            return name
    return "other"


def perf_table(rows, top):
    """The profile grouped by component, and its top symbols; ("" , {}) when there was no profile."""
    if not rows:
        return "_(no perf profile: perf was not usable on this machine)_\n", {}
    groups = {}
    for pct, dso, kind, symbol in rows:
        key = categorize(dso, kind, symbol)
        groups[key] = groups.get(key, 0.0) + pct
    listed = sum(p for p, *_ in rows)
    out = ["| component | share of samples |", "|---|---:|"]
    out += [f"| {key} | {pct:.1f} % |" for key, pct in sorted(groups.items(), key=lambda kv: -kv[1])]
    if 100 - listed > 0.5:
        out.append(f"| (symbols under the report's limit) | {100 - listed:.1f} % |")
    out += ["", "<details><summary>Top symbols</summary>\n", "| self | symbol |", "|---:|---|"]
    for pct, dso, kind, symbol in rows[:top]:
        short = symbol if len(symbol) <= SYMBOL_WIDTH else symbol[:SYMBOL_WIDTH - 3] + "..."
        out.append(f"| {pct:.2f} % | `{short}` ({dso}) |")
    out.append("\n</details>\n")
    return "\n".join(out), groups


# --------------------------------------------------------------------------------------------------
# render: the blocks


class Report:
    def __init__(self, data):
        self.d = data
        self.cfg = {k: num(v) for k, v in data.get("config", {}).items()}
        self.machine = data.get("machine", {})
        self.memory = data.get("memory", {})
        self.loads = {r["label"]: r for r in data.get("loads", [])}
        self.crit = data.get("criterion", {})
        self.hf = {name: {r["command"]: r for r in data["hyperfine"][name]["results"]}
                   for name in ("legacy", "bundle") if name in data.get("hyperfine", {})}
        many = data.get("hyperfine", {}).get("many")
        self.many = {r["command"]: r for r in many["results"]} if many else None
        cold = data.get("cold", [])
        self.cold = cold

        def pick(label, slow):
            return next((c for c in cold if c["label"] == label and (c["rtt_ms"] > 0) == slow), None)

        self.legacy0, self.bundle0 = pick("legacy", False), pick("bundle", False)
        self.legacy_rtt, self.bundle_rtt = pick("legacy", True), pick("bundle", True)
        self.bundle_digest_rtt = pick("bundle-digest", True)
        pods = data.get("cold_pods", [])
        sizes = str(self.cfg.get("cold_pod_sizes", "")).split()
        self.small, self.large = (sizes + ["", ""])[:2]
        self.c_small = [r for r in pods if r["label"] == f"cold {self.small}"]
        self.c_large = [r for r in pods if r["label"] == f"cold {self.large}"]
        self.cached_large = [r for r in pods if r["label"] == f"cached {self.large}"]
        self.rate = self.cfg.get("target_rate")
        self.sat_digest, self.sat_tag = self.best_saturation("digest"), self.best_saturation("tag")
        self.at_target = {(kind, h): self.loads.get(f"{kind} h{h} {self.rate}/s")
                          for kind in ("digest", "tag") for h in (2, 1)}
        self.perf_server, self.groups = perf_table(data.get("perf", []), top=12)
        self.perf_cli, self.cli_groups = perf_table(data.get("perf_cli", []), top=10)

    def best_saturation(self, kind):
        runs = [r for label, r in self.loads.items()
                if label.startswith(f"{kind} ") and "saturation" in label and "," not in label]
        return max(runs, key=lambda r: r["throughput_rps"]) if runs else None

    def kib(self, key):
        return int(self.memory.get(key, 0) or 0)

    # -- header ------------------------------------------------------------------------------------

    def machine_table(self):
        m = self.machine
        rows = ["| | |", "|---|---|",
                f"| CPUs (`nproc`) | {m.get('nproc')} |",
                f"| CPU (`/proc/cpuinfo` model name) | {m.get('cpu')} |",
                f"| memory | {int(m.get('mem_kib', 0)) / 1024 / 1024:.1f} GiB |",
                f"| kernel | {m.get('kernel')} |",
                f"| toolchain | {m.get('rustc')}, release profile |",
                f"| tools | cosign {m.get('cosign')}, distribution registry {m.get('registry')}, go-containerregistry's registry |",
                f"| code | {m.get('commit')} |",
                f"| load average (one, five, fifteen minutes) | before the run {m.get('loadavg_start')}, at its end {m.get('loadavg_end')} |"]
        if m.get("elapsed_s"):
            rows.append(f"| duration of `make bench` | {int(m['elapsed_s']) / 60:.1f} min |")
        return "\n".join(rows)

    def load_note(self):
        start = float((self.machine.get("loadavg_start") or "0").split()[0])
        if start <= float(self.cfg.get("quiet_loadavg", 0)):
            return ""
        return (f"> The one-minute load average was {start} before the run started: other work was sharing the "
                f"{self.machine.get('nproc')} CPUs. Throughput and especially tail latencies are pessimistic by an "
                "unknown margin; compare runs only at a similar load average.\n")

    # -- summary -----------------------------------------------------------------------------------

    def summary_rows(self):
        c, rows = self.cfg, []
        w = rows.append
        rps, p99, rate = c.get("target_rps"), c.get("target_p99_ms"), self.rate
        for kind, sat in (("digest", self.sat_digest), ("tag", self.sat_tag)):
            if sat:
                w(f"| 1 | cached admission, saturation, images by {kind} | ≥ {fmt_int(rps)} reviews/s | "
                  f"{fmt_int(sat['throughput_rps'])} /s ({sat['label']}) | {verdict(sat['throughput_rps'] >= rps)} |")
        for kind in ("digest", "tag"):
            for h in (2, 1):
                r = self.at_target[(kind, h)]
                if r:
                    errors = f", {r['errors']} errors" if r["errors"] else ""
                    ok = r["latency_us"]["p99"] <= p99 * 1000 and r["errors"] == 0
                    w(f"| 1 | p99 at {fmt_int(rate)} reviews/s, by {kind}, HTTP/{'2' if h == 2 else '1.1'} | ≤ {p99} ms | "
                      f"{ms(r['latency_us']['p99'])} ms{errors} | {verdict(ok)} |")
        l0, b0, lr, br = self.legacy0, self.bundle0, self.legacy_rtt, self.bundle_rtt
        if l0 and b0:
            w(f"| 2 | cold verification of one image, loopback (median) | — | legacy `.sig` {l0['per_image']['median_ms']} ms, "
              f"{l0['per_image']['requests_max']} requests; bundle {b0['per_image']['median_ms']} ms, "
              f"{b0['per_image']['requests_max']} requests | |")
        if lr and br:
            bound = c.get("target_round_trips")
            trips = [lr["per_image"]["round_trips_max"]]
            tag_trips = br["per_image"]["round_trips_max"]
            by_digest = ""
            if self.bundle_digest_rtt:
                d = self.bundle_digest_rtt["per_image"]["round_trips_max"]
                by_digest = f"; bundle named by digest {d}"
                trips.append(d)
            else:
                trips.append(tag_trips)
            mark = verdict(max(trips) <= bound)
            if max(trips) <= bound < tag_trips:
                mark += " for the signature paths; a tag's resolution is one more"
            w(f"| 2 | sequential registry round trips of one cold verification | ≤ {bound} each | legacy `.sig` {trips[0]} "
              f"(by tag), bundle by tag {tag_trips}{by_digest} | {mark} |")
        ratio = c.get("target_cli_ratio")
        for peer in ("cosign verify", "policy-tester", "kyverno apply"):
            if not self.hf:
                break
            values = {name: self.hf[name]["registryx-guard verify"]["mean"] / self.hf[name][peer]["mean"]
                      for name in self.hf if peer in self.hf[name]}
            if not values:
                reason = next((line.strip() for line in self.d.get("peers_skipped", [])
                               if f" {peer.split()[0]}:" in line), None)
                w(f"| 2 | `registryx-guard verify` / `{peer}` wall time | ≤ {ratio}× | not measured: {reason or 'peer not built'} | |")
                continue
            ratios = ", ".join(f"{name} {value:.2f}×" for name, value in values.items())
            judged = peer != "kyverno apply"
            w(f"| 2 | `registryx-guard verify` / `{peer}` wall time, same image, one run | {f'≤ {ratio}×' if judged else '—'} | "
              f"{ratios} | {verdict(max(values.values()) <= ratio) if judged else ''} |")
        if self.many:
            n = c.get("many_images")
            one = self.many["registryx-guard verify, 1 image"]["mean"]
            many = self.many[f"registryx-guard verify, {n} images"]["mean"]
            cosign = self.many[f"cosign verify, {n} images"]["mean"]
            x = c.get("target_many_ratio")
            w(f"| 2 | `verify` of {n} cold images in one process / of one | ≤ {x}× | {many * 1000:.1f} ms against "
              f"{one * 1000:.1f} ms ({many / one:.2f}×) | {verdict(many <= x * one)} |")
            w(f"| 2 | `verify` of {n} cold images / one `cosign verify` of the same {n} | ≤ {ratio}× | {many * 1000:.1f} ms "
              f"against {cosign * 1000:.1f} ms ({many / cosign:.2f}×) | {verdict(many <= ratio * cosign)} |")
        startup = self.d.get("hyperfine", {}).get("startup")
        if startup:
            by_name = {r["command"]: r for r in startup["results"]}
            ungoverned, version = by_name.get("verify, no policy governs the image"), by_name.get("version")
            if ungoverned and version:
                w(f"| 2 | process start: `verify` of an image no policy governs (no network call), mean | no work it does "
                  f"not need | {ungoverned['mean'] * 1000:.1f} ms, against {version['mean'] * 1000:.1f} ms for `--version` | |")
        rego_all = self.crit.get("rego/evaluate/all three modules")
        if rego_all:
            w(f"| 3 | Rego evaluations per second, one thread, the example modules together | — | "
              f"{fmt_int(1e9 / rego_all['mean_ns'])} /s | |")
        idle, filled, verified = self.kib("idle_rss_kib"), self.kib("filled_rss_kib"), self.kib("verified_rss_kib")
        idle_t, filled_t, cached = c.get("target_idle_mib"), c.get("target_filled_mib"), fmt_int(c.get("target_cached_results", 0))
        w(f"| 4 | resident memory, idle | ≤ {idle_t} MiB | {mib(idle)} MiB | {verdict(idle <= idle_t * 1024)} |")
        if filled:
            w(f"| 4 | resident memory with {cached} cached refusals | ≤ {filled_t} MiB | {mib(filled)} MiB | "
              f"{verdict(filled <= filled_t * 1024)} |")
        if verified:
            w(f"| 4 | resident memory with {cached} cached *verified* results (a fresh server) | ≤ {filled_t} MiB | "
              f"{mib(verified)} MiB | {verdict(verified <= filled_t * 1024)} |")
        e2e, bound = self.d.get("e2e_s", []), c.get("target_propagation_s")
        if e2e:
            w(f"| 5 | policy propagation, `kubectl apply` → first admission that obeys it | ≤ {bound} s | "
              f"{', '.join(f'{v:.2f} s' for v in e2e)} | {verdict(max(e2e) <= bound)} |")
        if self.d.get("policy_dir"):
            w(f"| 5 | policy propagation, `--policy-dir` file replaced → first admission that obeys it | — | "
              f"{self.d['policy_dir']['seconds']:.2f} s | |")
        x = c.get("target_many_ratio")
        if self.c_small and self.c_large:
            m1 = statistics.median(r["latency_ms"] for r in self.c_small)
            mn = statistics.median(r["latency_ms"] for r in self.c_large)
            cpu = statistics.median(r.get("registry_cpu_ms", 0) for r in self.c_large)
            w(f"| 6 | a Pod of {self.large} cold images against a Pod of {self.small}, through the server, loopback (median) | "
              f"≤ {x}× | {mn:.1f} ms against {m1:.1f} ms ({mn / m1:.1f}×; the registry's own CPU for the {self.large}: "
              f"{cpu:.0f} ms) | {verdict(mn <= x * m1)} |")
        rtt, bound = c.get("rtt_ms"), c.get("target_round_trips")
        for label, run in (("legacy `.sig`, distribution registry", lr), ("bundles, go-containerregistry's registry", br)):
            if run:
                t, one = run["twenty_at_once"], run["per_image"]["median_ms"]
                cpu = f"; registry CPU {t['registry_cpu_ms']:.0f} ms" if t.get("registry_cpu_ms") is not None else ""
                w(f"| 6 | {self.large} cold images at once against one, {rtt} ms per registry round trip (in-process), {label} | "
                  f"≤ one image + {bound} round trips | {t['total_ms']:.0f} ms against {one:.0f} ms "
                  f"({(t['total_ms'] - one) / rtt:.1f} round trips beyond one image{cpu}) | {verdict(t['total_ms'] <= one + bound * rtt)} |")
        return "\n".join(rows)

    # -- 1. cached admission -----------------------------------------------------------------------

    def load_table(self):
        rows = ["| run | reviews/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU µs/review | client CPU µs/review |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in self.loads.items():
            lat = r["latency_us"]
            error = f" ({r['first_error'][:60]})" if r["errors"] else ""
            rows.append(f"| {label} | {fmt_int(r['throughput_rps'])} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | "
                        f"{ms(lat['p999'])} | {ms(lat['max'])} | {r['errors']}{error} | "
                        f"{r.get('server_cpu_us_per_review') or '—'} | {r.get('client_cpu_us_per_review') or '—'} |")
        return "\n".join(rows)

    def profile_intro(self):
        p = self.d.get("profiled")
        if not p:
            return ""
        c = self.cfg
        return (f"`perf record -F {c.get('perf_server_hz')}` of the server for {c.get('perf_server_s')} s of a saturation "
                f"run by digest over HTTP/2 ({fmt_int(p['throughput_rps'])} reviews/s, {p['server_cpu_us_per_review']} µs "
                "of server CPU per review):\n")

    def admission_table(self):
        rows = ["| | mean |", "|---|---:|"]
        for key in sorted(k for k in self.crit if k.startswith("admission")):
            rows.append(f"| {key} | {crit_time(self.crit[key]['mean_ns'])} |")
        return "\n".join(rows)

    def admission_findings(self):
        c, out = self.cfg, []
        rps, p99 = c.get("target_rps"), c.get("target_p99_ms")
        adm_digest = self.crit.get("admission/cached review, 3 images by digest")
        adm_tag = self.crit.get("admission/cached review, 3 images by tag (3 registry HEADs)")
        parse = self.crit.get("admission parts/ImageRef::parse, one image by digest")
        sat = self.sat_digest
        if sat and adm_digest:
            server_us = sat.get("server_cpu_us_per_review") or 0
            client_us = sat.get("client_cpu_us_per_review") or 0
            nproc = int(self.machine.get("nproc", 1))
            out.append(f"- **By digest the webhook does no I/O but its own connection.** A review costs "
                       f"{adm_digest['mean_ns'] / 1000:.0f} µs of admission logic in-process and {server_us:.0f} µs of server "
                       f"CPU end to end (TLS, HTTP, logging, the kernel's loopback); the load generator adds {client_us:.0f} µs. "
                       f"With both on {nproc} CPUs the ceiling is about {nproc * 1e6 / max(1, server_us + client_us):,.0f} "
                       f"reviews/s; {fmt_int(sat['throughput_rps'])} were measured"
                       + (f", above the {fmt_int(rps)}/s target." if sat["throughput_rps"] >= rps else
                          f", under the {fmt_int(rps)}/s target; the components below are what to cut."))
        rows = self.d.get("perf", [])
        if parse and self.groups:
            regex_share = sum(v for k, v in self.groups.items() if k.startswith("regex"))
            pike = sum(pct for pct, dso, kind, sym in rows if "pikevm::PikeVM" in sym)
            out.append(f"- **Parsing image references is no longer a cost**: `ImageRef::parse` takes {crit_time(parse['mean_ns'])} "
                       "per image with the hand-written distribution grammar (`src/registry/grammar.rs`, tested against "
                       "oci-spec's regular expression it replaced; see the history below for what that one cost). The regex "
                       f"symbols left in the profile ({regex_share:.0f} %, the PikeVM {pike:.0f} %) are the policy globs' and "
                       "identities' own.")
        quiet, loud = self.loads.get("digest h2 saturation, --log-level warn"), self.loads.get("digest h2 saturation")
        if quiet and loud:
            cost = 100 * (1 - loud["throughput_rps"] / quiet["throughput_rps"])
            out.append(f"- **Logging costs {cost:.0f} % of the throughput.** The same saturation run against a server with "
                       f"`--log-level warn` answered {fmt_int(quiet['throughput_rps'])} reviews/s against "
                       f"{fmt_int(loud['throughput_rps'])} at `info`: each admission logs one `info` line. An image admitted "
                       "without a warning is logged as who vouched for it (`verifiedBy`, its digest), a refused or warned one "
                       "with its whole verdict, and the line is written by the logging thread, not the review's. (One pair "
                       f"of {c.get('duration', self.machine.get('duration'))} s runs: the share carries their run-to-run noise.)")
        plain, renewing = self.loads.get("digest h2 saturation"), self.loads.get("digest h2 saturation, renewing")
        if plain and renewing:
            m = self.memory
            out.append(f"- **Background renewal keeps a cached admission as fast.** The same saturation run against a "
                       f"server that renews every verified result {c.get('renew_after_s')} s after its signatures were "
                       f"read (`--revalidate-after-seconds {c.get('renew_after_s')} --verified-max-age-seconds "
                       f"{c.get('renew_max_age_s')}`; the defaults are {c.get('revalidate_after_s')} and "
                       f"{c.get('verified_max_age_s')}) answered {fmt_int(renewing['throughput_rps'])} reviews/s "
                       f"(p99 {ms(renewing['latency_us']['p99'])} ms) against {fmt_int(plain['throughput_rps'])}; it "
                       f"renewed {m.get('renewing_renewed')} results in the background meanwhile, with "
                       f"{m.get('renewing_misses')} cache misses in all (the first reads: no review waited for a "
                       f"renewal) and {m.get('renewing_registry_requests')} registry requests.")
        if self.groups:
            g = self.groups
            alloc = sum(v for k, v in g.items() if k.startswith("memory allocation") or k.startswith("memcpy"))
            tls = sum(v for k, v in g.items() if k.startswith("TLS") or k.startswith("crypto"))
            out.append(f"- The rest is spread: the kernel (loopback TCP, wake-ups) {g.get(KERNEL, 0):.0f} %, the allocator "
                       f"and memcpy {alloc:.0f} %, JSON {g.get('JSON (serde_json)', 0):.0f} % (the review is parsed into a "
                       "`DynamicObject`, turned into a `serde_json::Value` to extract the images, and the answer is "
                       f"serialized; each step allocates), HTTP {g.get('HTTP (hyper, h2, axum, tower)', 0):.0f} %, TLS and "
                       f"its crypto {tls:.1f} %. The server's allocator is mimalloc (see the history below for its "
                       "measured effect).")
        if self.sat_tag and adm_tag:
            ttl = c.get("tag_cache_s")
            out.append(f"- **By tag, the digest comes from the tag cache**: a tag's digest is reused for {ttl} s (coalesced, "
                       "dropped at once by a RegistryX push event for its repository; safe because admitted tags are pinned "
                       f"to the digest that was verified), so a cached review by tag costs {crit_time(adm_tag['mean_ns'])} "
                       f"in-process against {crit_time(adm_digest['mean_ns']) if adm_digest else '?'} by digest, and the "
                       f"server saturates at {fmt_int(self.sat_tag['throughput_rps'])} reviews/s by tag against "
                       f"{fmt_int(sat['throughput_rps']) if sat else '?'} by digest. The registry is asked once per tag per "
                       f"{ttl} s instead of once per image per review.")
        top = self.at_target[("digest", 2)]
        slow_low = [(label, r) for label, r in self.loads.items() if label.startswith("digest ") and "/s" in label
                    and int(label.split()[-1].split("/")[0]) < self.rate and r["latency_us"]["p99"] > p99 * 1000]
        if slow_low and top:
            out.append("- **Lower rates do not have a shorter tail**: " + ", ".join(
                f"`{label}` p99 {ms(r['latency_us']['p99'])} ms" for label, r in slow_low)
                + f", against {ms(top['latency_us']['p99'])} ms at {fmt_int(self.rate)}/s over HTTP/2. The server spends "
                f"more CPU per review at low rates ({', '.join(str(r.get('server_cpu_us_per_review')) for _, r in slow_low)} "
                f"µs against {top.get('server_cpu_us_per_review') or 0} µs): between two reviews its threads park, and "
                "each review pays for waking them (and the generator's), in the scheduler and, on a virtual machine, "
                "possibly in waking an idle vCPU. That is a reading of the CPU figures, not a measured attribution; the "
                f"target is set at {fmt_int(self.rate)}/s.")
        if top:
            h1 = self.at_target[("digest", 1)]
            ok = top["latency_us"]["p99"] <= p99 * 1000 and (not h1 or h1["latency_us"]["p99"] <= p99 * 1000)
            if ok:
                out.append(f"- **At {fmt_int(self.rate)} reviews/s by digest the tail stays low**: p99 "
                           f"{ms(top['latency_us']['p99'])} ms over HTTP/2"
                           + (f", {ms(h1['latency_us']['p99'])} ms over HTTP/1.1" if h1 else "") + ".")
            else:
                busy = self.rate * (top.get("server_cpu_us_per_review") or 0) / 1e4
                out.append(f"- **At {fmt_int(self.rate)} reviews/s by digest the p99 is {ms(top['latency_us']['p99'])} ms over "
                           "HTTP/2" + (f" and {ms(h1['latency_us']['p99'])} ms over HTTP/1.1" if h1 else "")
                           + f", over the {p99} ms target,** while the median is {ms(top['latency_us']['p50'])} ms and the "
                           f"server spends {top.get('server_cpu_us_per_review')} µs of CPU per review: the server is about "
                           f"{busy:.0f} % busy, so the tail is not queueing for CPU in the webhook but scheduling: the "
                           "server's runtime threads, the generator and its pacing thread share the CPUs, and a review "
                           "waits whenever the thread that holds its connection is descheduled. "
                           + ("The load average shows other work on the machine as well. " if self.load_note() else "")
                           + "To verify on a quiet machine, rerun `make bench`.")
        return "\n".join(out)

    # -- 2. cold verification ----------------------------------------------------------------------

    def cold_table(self):
        rows = ["| format, registry | RTT | median ms | p90 ms | requests per image | sequential round trips | "
                "all in turn, ms | all at once (`join_all`), ms | cached re-check, µs/image |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        names = {"legacy": "legacy `.sig`, distribution", "bundle": "bundle, referrers API",
                 "bundle-digest": "bundle, referrers API, named by digest"}
        for c in self.cold:
            p = c["per_image"]
            if p.get("round_trips_min") is None:
                trips = "—"
            elif p["round_trips_min"] == p["round_trips_max"]:
                trips = f"{p['round_trips_min']}"
            else:
                trips = f"{p['round_trips_min']}–{p['round_trips_max']}"
            reqs = f"{p['requests_min']}" if p["requests_min"] == p["requests_max"] else f"{p['requests_min']}–{p['requests_max']}"
            rows.append(f"| {names.get(c['label'], c['label'])} | {c['rtt_ms']} ms | {p['median_ms']} | {p['p90_ms']} | {reqs} | "
                        f"{trips} | {c['sequential']['total_ms']:.0f} | {c['concurrent']['total_ms']:.0f} | "
                        f"{c['cached']['us_per_image']:.0f} |")
        return "\n".join(rows)

    def cold_findings(self):
        lr, br, l0, c = self.legacy_rtt, self.bundle_rtt, self.legacy0, self.cfg
        if not (lr and br and l0):
            return ""
        rtt, n = c.get("rtt_ms"), c.get("cold_images")
        bd = self.bundle_digest_rtt
        out = [f"- **Round trips.** Legacy `.sig`: {lr['per_image']['round_trips_max']} sequential round trips "
               f"({lr['per_image']['requests_max']} requests): resolve the tag; the `.sig` tag and the referrers fallback "
               "tag at once (and the referrers API, on the first images only: this registry has none, which the client "
               f"remembers for {c.get('referrers_memory_min')} minutes after {c.get('referrers_misses')} such answers in a "
               f"row); the simple-signing payload. Bundles: {br['per_image']['round_trips_max']} "
               f"({br['per_image']['requests_max']} requests): resolve; the referrers API, the `.sig` tag and the fallback "
               "tag at once; the bundle's manifest; the bundle blob. A referrers answer lists only descriptors, so the "
               "manifest and then its layer must be read in turn"
               + (f"; named by digest, {bd['per_image']['round_trips_max']}" if bd else "")
               + f". With {rtt} ms per round trip a cold image takes {lr['per_image']['median_ms']:.0f} ms (legacy) and "
               f"{br['per_image']['median_ms']:.0f} ms (bundle).",
               f"- **A batch of {n}.** In turn, {n} images cost {n} × the round trips "
               f"({lr['sequential']['total_ms'] / 1000:.1f} s legacy at {rtt} ms). At once, with one verifier and `join_all`, "
               f"{lr['concurrent']['total_ms']:.0f} ms: a registry client lets at most {c.get('registry_in_flight')} requests "
               "be in flight (`RegistryConfig::max_concurrent_requests`) and a verifier at most "
               f"{c.get('verifications_per_registry')} verifications per registry, so the {lr['concurrent']['requests']} "
               f"requests go out in waves of at most {c.get('registry_in_flight')}. The caps protect registries (and bound "
               "what a hanging one holds). On loopback the registry, which shares the CPUs, is the limit: "
               f"{l0['concurrent']['total_ms']:.0f} ms at once against {l0['sequential']['total_ms']:.0f} ms in turn (legacy).",
               f"- **A cached image by tag costs no round trip**: {lr['cached']['us_per_image']:.0f} µs per image at {rtt} ms "
               f"RTT against {l0['cached']['us_per_image']:.0f} µs on loopback: the tag cache answers (cached admission, above)."]
        return "\n".join(out)

    def hyperfine_tables(self):
        if not self.hf:
            return ""
        c, out = self.cfg, []
        out.append("`registryx-guard verify IMAGE --policy FILE` against `cosign verify --key cosign.pub "
                   "--insecure-ignore-tlog=true --offline=true --new-bundle-format=… IMAGE`, the same image, a new process "
                   f"each run (hyperfine, {c.get('hyperfine_warmup')} warm-up runs, {c.get('hyperfine_runs')} runs):\n")
        out += ["| image | command | mean | registryx-guard verify / it |", "|---|---|---:|---:|"]
        for name, results in self.hf.items():
            label = "legacy `.sig`, distribution" if name == "legacy" else "bundle, referrers API"
            ours = results["registryx-guard verify"]
            for command, r in results.items():
                out.append(f"| {label} | {command} | {r['mean'] * 1000:.1f} ± {r['stddev'] * 1000:.1f} ms | "
                           f"{ours['mean'] / r['mean']:.2f}× |")
        out.append("")
        legacy = self.hf.get("legacy", {})
        if "policy-tester" in legacy or "kyverno apply" in legacy:
            out.append("The peers, on the legacy image only (built by `bench/peers.sh` from their pinned modules, "
                       "policy-controller's `policy-tester` and the Kyverno CLI; their policies, in the commands below, "
                       "name the same key with no transparency log): `policy-tester --policy cip.yaml --image IMAGE` (a "
                       "ClusterImagePolicy with one key authority) and `kyverno apply policy.yaml --resource pod.yaml` (a "
                       "ClusterPolicy with one `verifyImages` rule, `ignoreTlog`, `ignoreSCT`). Most of a `kyverno apply` "
                       "run is its own start-up, not the verification.\n")
        if self.many:
            n = c.get("many_images")
            one = self.many["registryx-guard verify, 1 image"]["mean"]
            out.append(f"{n} cold legacy-signed images of the distribution registry in one process, against one of them "
                       f"and against `cosign verify` of the same {n} (hyperfine, {c.get('many_warmup')} warm-up runs, "
                       f"{c.get('many_runs')} runs; each run is a new process, so every image is cold):\n")
            out += ["| command | mean | ratio to `verify` of one image |", "|---|---:|---:|"]
            for name, r in self.many.items():
                out.append(f"| {name} | {r['mean'] * 1000:.1f} ± {r['stddev'] * 1000:.1f} ms | {r['mean'] / one:.2f}× |")
            out.append("")
            cpu = self.d.get("many_cpu") or {}
            if cpu:
                cpu1, cpun = int(cpu["registry_cpu_ms_1"]), int(cpu[f"registry_cpu_ms_{n}"])
                nproc = int(self.machine.get("nproc", 1))
                floor = cpun / nproc
                x = c.get("target_many_ratio")
                out.append(f"The registry's own CPU time over one more run of each: {cpu1} ms for one image, {cpun} ms "
                           f"for the {n} ({cpun / n:.1f} ms per image; {c.get('cpu_tick_ms')} ms resolution). The {n} "
                           "images' requests go out at once, so the wall time is bounded below by the registry's work "
                           f"spread over the machine's {nproc} CPUs, about {floor:.0f} ms, which the distribution registry "
                           "shares with the verifying process"
                           + (f": above {x}× one image ({x * one * 1000:.0f} ms), so on this machine that target is out of "
                              "reach for any client of this registry, and the figure to compare is the ratio to `cosign "
                              "verify`, which reads the same images one after another." if floor > x * one * 1000 else ".")
                           + "\n")
        return "\n".join(out)

    def cli_profile(self):
        if not self.hf:
            return ""
        out = [f"Where a `registryx-guard verify` process spends its time (`perf record`, {self.cfg.get('perf_cli_runs')} "
               "runs of the legacy command):\n", self.perf_cli]
        startup = (self.legacy0 or {}).get("startup")
        legacy = self.hf.get("legacy")
        if self.cli_groups and startup and legacy:
            g = self.cli_groups
            regex_share = sum(v for k, v in g.items() if k.startswith("regex"))
            cert_share = sum(v for k, v in g.items() if k.startswith("certificates"))
            kernel_mm = sum(pct for pct, dso, kind, sym in self.d.get("perf_cli", []) if kind == "k" and re.search(
                r"fault|page|folio|_mm|mm_|memcg|mem_cgroup|pte|vma|lruvec|rmap|alloc|list_del|mas_|charge", sym))
            out.append(f"A cold verification takes {self.legacy0['per_image']['median_ms']} ms in a running verifier (the "
                       f"first table), yet a `verify` process takes {legacy['registryx-guard verify']['mean'] * 1000:.0f} ms "
                       f"({legacy['cosign verify']['mean'] * 1000:.0f} ms for `cosign verify`). Start-up, timed by "
                       "`verify_bench` as the first things its own process does:\n")
            out.append(f"- the first `ImageRef::parse` takes {startup['first_parse_ms']:.2f} ms, the next one "
                       f"{startup['next_parse_us']:.1f} µs: references are parsed by the hand-written distribution grammar "
                       f"(`src/registry/grammar.rs`), no regular expression is compiled ({regex_share:.1f} % of the "
                       "process's samples are regex, the policy globs' own);")
            out.append(f"- building the registry client takes {startup['registry_client_ms']:.1f} ms. For a plain-HTTP "
                       "registry (this one) it does not load the system's trust store; an HTTPS URL met next to such a "
                       "registry (a token realm, RegistryX's REST API) gets a client that does, built when first needed. "
                       f"Certificates are {cert_share:.1f} % of the samples.\n")
            out.append(f"The rest is the kernel ({g.get(KERNEL, 0):.0f} %, {kernel_mm:.0f} points of it memory management: "
                       "page faults of a new process) and the round trips to a registry that shares the CPUs.")
        return "\n".join(out)

    # -- 3. Rego -----------------------------------------------------------------------------------

    def rego(self):
        keys = [k for k in self.crit if k.startswith("rego/")]
        if not keys:
            return "_Pending: no criterion estimates for `benches/rego.rs` were found in this run._"
        out = ["`benches/rego.rs` (criterion): `RegoPolicy::compile` once, then `RegoPolicy::evaluate` on the input "
               "document of a signed production image with a completed scan (no rule denies, every rule is evaluated), "
               "for each example module of `policies/`, one thread:\n", "| | mean | per second, one thread |", "|---|---:|---:|"]
        for key in sorted(keys, key=lambda k: (not k.startswith("rego/evaluate"), k)):
            out.append(f"| {key} | {crit_time(self.crit[key]['mean_ns'])} | {fmt_int(1e9 / self.crit[key]['mean_ns'])} |")
        out.append("\nEach evaluation clones the prepared engine and converts the input document into regorus values; "
                   "compilation happens once per policy change. Rego runs per (image, policy) on admissions whose policies "
                   "carry rules; at these costs it adds tens of microseconds to such a review.")
        return "\n".join(out)

    # -- 4. memory ---------------------------------------------------------------------------------

    def memory_block(self):
        c, m, out = self.cfg, self.memory, []
        idle, filled, after = self.kib("idle_rss_kib"), self.kib("filled_rss_kib"), self.kib("after_load_rss_kib")
        cached = fmt_int(c.get("target_cached_results", 0))
        out += ["| when | RSS |", "|---|---:|",
                f"| idle: started, policies loaded, certificate loaded, no request yet | {mib(idle)} MiB |"]
        if after:
            out.append(f"| after the load runs of the cached-admission section (by digest and by tag) | {mib(after)} MiB |")
        if filled:
            out.append(f"| with {cached} cached results (below) | {mib(filled)} MiB (peak `VmHWM` {mib(m['filled_hwm_kib'])} MiB) |")
        out.append("")
        fill = self.d.get("fill")
        if fill:
            results = int(m.get("fill_results", 0))
            ttl = c.get("refused_ttl_s")
            out.append(f"How the cache was filled, through the public API only: `loadgen fill` sent {fill['reviews']} reviews "
                       f"of Pods of {fill['per_review']} containers, {fill['digests']:,} distinct digests in all, none signed, "
                       f"to a policy of {results // max(1, fill['digests'])} key authorities on the in-memory registry. Each "
                       "digest costs one signature discovery (all its requests answered \"nothing\") and leaves one refusal "
                       "per authority in the result cache, keyed (image@digest, authority fingerprint), as a verified result "
                       "is. The server's own counter (`registryx_guard_verification_cache_lookups_total{result=\"miss\"}`) "
                       f"rose by {results:,}, with {m.get('fill_registry_errors')} registry errors. Refusals live {ttl} s; "
                       f"the fill took {fill['elapsed_s']} s, so "
                       + ("every result was still cached when the RSS was read." if fill["elapsed_s"] < ttl else
                          f"only about {min(results, int(results * ttl / fill['elapsed_s'])):,} of them can have been "
                          f"alive at once: the figure is for that many, not {cached}."))
            out.append("")
            if filled and after:
                per = (filled - after) * 1024 / max(1, results)
                out.append(f"That is about {per:.0f} bytes of resident memory per cached refusal, moka's bookkeeping "
                           "included (the key's two strings, the evidence with its reason, the entry's timers and deque nodes).")
                out.append("")
        fv, verified = self.d.get("fill_verified"), self.kib("verified_rss_kib")
        if fv and verified:
            results, idle_v = int(m.get("verified_results", 0)), self.kib("verified_idle_rss_kib")
            out.append(f"Verified results, on a fresh `serve` process (idle {mib(idle_v)} MiB): `loadgen fill --sign-with` "
                       f"first pushed {fv['digests']:,} distinct image manifests to the in-memory registry, each with a cosign "
                       f"legacy `.sig` manifest holding one signature layer per key of a policy of {fv['signed_by']} key "
                       f"authorities ({fv['push_s']} s), then sent {fv['reviews']:,} reviews of Pods of {fv['per_review']} "
                       f"containers: {fv['allowed']:,} admitted, {fv['refused']:,} refused, {fv['errors']} errors. Every "
                       "digest is verified against every authority (a policy checks all its authorities), so the cache "
                       f"gained {results:,} results (`..._cache_lookups_total{{result=\"miss\"}}`), with "
                       f"{m.get('verified_registry_errors')} registry errors; this server keeps verified results "
                       f"{c.get('fill_verified_max_age_s')} s (`--verified-max-age-seconds`; the default is "
                       f"{c.get('verified_max_age_s')} s, renewed while in use) so that the whole fill stays cached; the "
                       f"fill took {fv['elapsed_s']} s.")
            out += ["", "| when | RSS |", "|---|---:|", f"| fresh server, idle | {mib(idle_v)} MiB |",
                    f"| with {results:,} cached verified results | {mib(verified)} MiB (peak `VmHWM` "
                    f"{mib(m['verified_hwm_kib'])} MiB) |", ""]
            per = (verified - idle_v) * 1024 / max(1, results)
            out.append(f"About {per:.0f} bytes of resident memory per cached verified result, everything the fill left "
                       "included (the last signature discoveries, connection buffers).")
        return "\n".join(out)

    # -- 5. propagation ----------------------------------------------------------------------------

    def propagation(self):
        out, e2e, bound = [], self.d.get("e2e_s", []), self.cfg.get("target_propagation_s")
        if e2e:
            out.append("`tests/cluster/e2e.rs` (etcd, kube-apiserver, the chart installed with helm, the webhook process) "
                       "applies a changed policy with `kubectl apply` and then runs `kubectl run --dry-run=server` until the "
                       "API server's admission obeys it; the test prints the time. Runs: "
                       + ", ".join(f"{v:.3f} s" for v in e2e)
                       + f" (target ≤ {bound} s: {verdict(max(e2e) <= bound)}). Each attempt is a new `kubectl` process, "
                       "so the figure is an upper bound: it includes up to one `kubectl` start-up and round trip of slack.")
        else:
            out.append("_Not measured in this run (`RXG_BENCH_E2E_RUNS=0`)._")
        pd = self.d.get("policy_dir")
        if pd:
            out.append("")
            out.append(f"Without a cluster, `serve --policy-dir` polls its folder every {self.cfg.get('policy_dir_poll_ms')} "
                       "ms and loads a change once the folder has held still for one whole interval (a file caught "
                       f"mid-write is never published): replacing the file took {pd['seconds']:.3f} s to the first refused "
                       f"review ({pd['polls']} reviews still admitted in between).")
        return "\n".join(out)

    # -- 6. many images ----------------------------------------------------------------------------

    def many_block(self):
        if not (self.c_small and self.c_large):
            return ""
        c, out = self.cfg, []
        out.append(f"Through the server of the cached-admission section over HTTP/2: a review of a Pod of {self.small} "
                   f"image and one of a Pod of {self.large} images, each image cold for the server (legacy `.sig`, by tag, "
                   f"on the distribution registry), {c.get('cold_pod_runs')} times each:\n")
        out += ["| Pod | latency ms (each run) | median | registry requests |", "|---|---|---:|---:|"]
        for label, rows in ((f"{self.small} cold image", self.c_small), (f"{self.large} cold images", self.c_large)):
            runs = ", ".join(f"{r['latency_ms']:.1f}" for r in rows)
            requests = ", ".join(str(r["registry_requests"]) for r in rows)
            out.append(f"| {label} | {runs} | {statistics.median(r['latency_ms'] for r in rows):.1f} | {requests} |")
        if self.cached_large:
            r = self.cached_large[0]
            counted = r.get("registry_requests")
            out.append(f"| the last {self.large} again, now cached | {r['latency_ms']:.1f} | | "
                       f"{counted if counted is not None else 'not counted'} |")
        out.append("")
        m1 = statistics.median(r["latency_ms"] for r in self.c_small)
        mn = statistics.median(r["latency_ms"] for r in self.c_large)
        out.append(f"The {self.large} images are verified concurrently (`join_all` over the containers), so {self.large} cold "
                   f"images cost {mn / m1:.1f}× one. On loopback what remains is work: "
                   f"{statistics.median(r['registry_requests'] for r in self.c_large):.0f} registry requests answered by a "
                   f"registry on the same CPUs (at most {c.get('registry_in_flight')} at a time), and {self.large} signature "
                   f"checks; the registry itself spent {statistics.median(r.get('registry_cpu_ms', 0) for r in self.c_large):.0f} "
                   f"ms of CPU on them. The cached review of the same {self.large} images is answered from the caches (the "
                   f"tags were resolved less than {c.get('tag_cache_s')} s before).\n")
        lr, br, l0, b0 = self.legacy_rtt, self.bundle_rtt, self.legacy0, self.bundle0
        if lr and br and l0 and b0:
            t, b = lr["twenty_at_once"], br["twenty_at_once"]
            one_l, one_b, rtt = lr["per_image"]["median_ms"], br["per_image"]["median_ms"], c.get("rtt_ms")
            cpu = ""
            if t.get("registry_cpu_ms") is not None and b.get("registry_cpu_ms") is not None:
                cpu = (f": the distribution registry spent {t['registry_cpu_ms']:.0f} ms of CPU on the {t['requests']} "
                       f"requests of the legacy batch ({t['registry_cpu_ms'] / max(1, t['requests']):.1f} ms each), "
                       f"go-containerregistry's {b['registry_cpu_ms']:.0f} ms on {b['requests']}")
            out.append(f"With {rtt} ms per round trip (in-process, the cold-verification proxy), {self.large} cold images at "
                       f"once took {t['total_ms']:.0f} ms against {one_l:.0f} ms for one (legacy, distribution registry: "
                       f"{(t['total_ms'] - one_l) / rtt:.1f} round trips beyond one image) and {b['total_ms']:.0f} ms against "
                       f"{one_b:.0f} ms (bundles, go-containerregistry's registry: {(b['total_ms'] - one_b) / rtt:.1f}). The "
                       f"client keeps up to {c.get('registry_in_flight')} requests in flight per registry, so the images' "
                       "reads go out together, wave by wave; what is left beyond the round trips is the registries' own "
                       f"work on the CPUs they share with the verifier{cpu}. On loopback the same batches took "
                       f"{l0['twenty_at_once']['total_ms']:.0f} ms (legacy) and {b0['twenty_at_once']['total_ms']:.0f} ms (bundle).")
        return "\n".join(out)

    # -- 7. crowds ---------------------------------------------------------------------------------

    def crowd_block(self):
        crowds = self.d.get("crowds", [])
        if not crowds:
            return ""
        c = self.cfg
        floods = {"none": "none", "idle": "connections that never send a byte",
                  "handshake": "connections stalled inside the ClientHello",
                  "body": f"bodies stalled after {c.get('crowd_body_sent_kib')} KiB ({c.get('crowd_body_announced_mib')} MiB announced)"}
        out = ["### The API server's reviews during a crowd", "",
               f"`loadgen crowd`: reviews by digest from the loopback address, {c.get('crowd_rate')} a second, each on a new "
               "HTTP/1.1 connection (an API server whose pool has no idle connection left), "
               f"`timeout={c.get('crowd_timeout_s')}s`, while {c.get('crowd_addresses')} other loopback addresses flood a "
               f"fresh server. Answered: an HTTP OK AdmissionReview within the {c.get('crowd_timeout_s')} s. Latency from "
               "the intended send time, connect and TLS handshake included.", "",
               "| flood | attackers | attacker connects | answered | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
        for r in crowds:
            attackers = "-" if r["flood"] == "none" else f"{r['addresses']} addresses × {r['per_address']}"
            lat = r["latency_us"]
            answered = f"{r['answered']} of {r['reviews']} ({100 * r['success_rate']:.1f} %)"
            out.append(f"| {floods.get(r['flood'], r['flood'])} | {attackers} | {fmt_int(r['attacker_connects'])} | "
                       f"{answered} | {ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['max'])} |")
        for r in crowds:
            if r.get("first_error"):
                out += ["", f"First failure during `{r['flood']}`: `{r['first_error'][:200]}`"]
        return "\n".join(out)

    # -- the document ------------------------------------------------------------------------------

    def fields(self):
        c = self.cfg
        return {
            "date": self.machine.get("date", "?"),
            "machine_table": self.machine_table(),
            "load_note": self.load_note(),
            "summary_rows": self.summary_rows(),
            "duration": self.machine.get("duration", "?"),
            "warmup": c.get("warmup_s", "?"),
            "saturation_concurrency": (self.sat_digest or {}).get("concurrency", c.get("saturation_concurrency", "?")),
            "h1_rate_connections": c.get("h1_rate_connections", "?"),
            "load_table": self.load_table(),
            "registry_requests_during_load": fmt_int(self.memory.get("registry_requests_during_load", 0)),
            "profile_intro": self.profile_intro(),
            "perf_server": self.perf_server,
            "admission_table": self.admission_table(),
            "admission_findings": self.admission_findings(),
            "cold_images": c.get("cold_images", "?"),
            "rtt_ms": c.get("rtt_ms", "?"),
            "cold_table": self.cold_table(),
            "cold_findings": self.cold_findings(),
            "hyperfine_tables": self.hyperfine_tables(),
            "cli_profile": self.cli_profile(),
            "rego": self.rego(),
            "memory": self.memory_block(),
            "propagation": self.propagation(),
            "many": self.many_block(),
            "bounds": include("bounds.md"),
            "crowd": self.crowd_block(),
            "soak": include("soak-results.md"),
            "cluster": include("cluster-results.md"),
            "fuzz": include("fuzz-results.md"),
            "attestations": include("attestation-results.md"),
            "cli": include("cli-results.md"),
            "history": include("history.md"),
            "commands": "\n".join(self.d.get("commands", [])),
        }


def include(name):
    """A hand-written file of bench/, verbatim (its figures are its own, dated where it says so)."""
    file = os.path.join(HERE, name)
    if not os.path.exists(file):
        return ""
    with open(file) as f:
        return f.read().rstrip("\n")


def render(data, template=None):
    if template is None:
        with open(os.path.join(HERE, "BENCHMARKS.md.tmpl")) as f:
            template = f.read()
    text = string.Template(template).substitute(Report(data).fields())
    # Blocks that had nothing to say leave blank lines behind: one blank line between paragraphs.
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def main(argv):
    if len(argv) == 4 and argv[1] == "collect":
        json.dump(collect(argv[2], argv[3]), sys.stdout, indent=1, ensure_ascii=False)
        print()
    elif len(argv) == 3 and argv[1] == "render":
        sys.stdout.write(render(json.load(open(argv[2]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
