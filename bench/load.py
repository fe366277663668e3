#!/usr/bin/env python3
"""One bounded HTTP load run against the webhook with vegeta, printed as one JSON line for load.jsonl.

    load.py --label L --url URL --ca CA --body FILE --http 1|2 --duration S --warmup S --server-pid PID \
            (--rate R [--connections N] | --concurrency C)

Open loop (--rate): vegeta's pacer sends request i at start + i/R on as many workers as it takes, so a
stalled server shows in the latencies instead of slowing the sender down. Closed loop (--concurrency C):
`-rate=0 -max-workers=C`, C requests always in flight. A warm-up attack (not recorded) comes first. The
server's CPU (/proc/PID/stat) and vegeta's own (the children's rusage) are read around the measured attack;
each answer's body says whether the review was allowed.
"""

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def attack(args, seconds, out):
    command = ["vegeta", "attack", f"-duration={seconds}s", f"-root-certs={args.ca}", f"-body={args.body}",
               "-header=Content-Type: application/json", f"-http2={'true' if args.http == 2 else 'false'}",
               # The decision comes first in the answer (after the uid): capping the kept body keeps an hour's
               # results small.
               "-timeout=10s", "-max-body=192", f"-output={out}"]
    if args.rate:
        command.append(f"-rate={args.rate}/s")
        if args.http == 1 and args.connections:
            command.append(f"-max-connections={args.connections}")
    else:
        command += ["-rate=0", f"-workers={args.concurrency}", f"-max-workers={args.concurrency}"]
        if args.http == 1:
            command.append(f"-max-connections={args.concurrency}")
    subprocess.run(command, input=f"POST {args.url}\n", text=True, check=True)


def percentiles(values):
    values = sorted(values)
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0}

    def at(q):
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": values[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--label", "--url", "--ca", "--body"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--http", type=int, choices=(1, 2), default=2)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--server-pid")
    parser.add_argument("--rate", type=int)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--concurrency", type=int)
    args = parser.parse_args()
    if not (args.rate or args.concurrency):
        parser.error("--rate or --concurrency")
    with tempfile.TemporaryDirectory() as work:
        if args.warmup > 0:
            attack(args, args.warmup, os.path.join(work, "warmup.bin"))
        results = os.path.join(work, "results.bin")
        client_before, server_before = children_cpu(), cpu_seconds(args.server_pid)
        attack(args, args.duration, results)
        client_cpu, server_after = children_cpu() - client_before, cpu_seconds(args.server_pid)
        allowed = refused = errors = 0
        first_error, latencies = None, []
        # Streamed: an hour of the soak is hundreds of thousands of results.
        encode_command = ["vegeta", "encode", "--to", "json", results]
        with subprocess.Popen(encode_command, stdout=subprocess.PIPE, text=True) as encode:
            for line in encode.stdout:
                r = json.loads(line)
                body = base64.b64decode(r.get("body") or "")
                if r.get("code") != 200 or r.get("error"):
                    errors += 1
                    first_error = first_error or (r.get("error") or f"HTTP {r.get('code')}")
                    continue
                latencies.append(r["latency"] / 1000)
                if b'"allowed":true' in body.replace(b" ", b""):
                    allowed += 1
                else:
                    refused += 1
        if encode.returncode:
            raise SystemExit(f"vegeta encode failed ({encode.returncode})")
    completed = allowed + refused

    def per_review(cpu):
        return round(cpu * 1e6 / completed) if cpu is not None and completed else None

    latency = {k: round(v) for k, v in percentiles(latencies).items()}
    print(json.dumps({
        "label": args.label, "http": args.http, "mode": "open" if args.rate else "closed", "rate": args.rate,
        "concurrency": args.concurrency, "connections": args.connections, "duration_s": args.duration,
        "completed": completed, "allowed": allowed, "refused": refused, "errors": errors, "first_error": first_error,
        "throughput_rps": round(completed / args.duration),
        # vegeta times each request from the moment it is sent: latency and service time are the same figure.
        "latency_us": latency, "service_us": latency,
        "server_cpu_us_per_review": per_review(None if server_before is None or server_after is None
                                               else server_after - server_before),
        "client_cpu_us_per_review": per_review(client_cpu),
    }))


if __name__ == "__main__":
    sys.exit(main())
