#!/usr/bin/env bash
# `make bench`: every measurement of BENCHMARKS.md, on this machine, then BENCHMARKS.md rewritten from the
# figures of this very run (bench/render.py). Everything runs on 127.0.0.1, every load is bounded in time
# and count, and everything started here is stopped on exit (e2e/lib.sh's cleanup).
#
#   RXG_BENCH_SECONDS  measured seconds of each load run (default 10; each run adds 1 s of warm-up)
#   RXG_BENCH_OUT      the report to write (default BENCHMARKS.md at the repository root)
#   RXG_BENCH_E2E_RUNS runs of the end-to-end test for the policy-propagation figure (default 3; 0 skips)
#   RXG_KEEP_WORK=1    keep the work folder (logs, review bodies, raw JSON results)
#
# What runs, in order (sections of BENCHMARKS.md):
#   setup   release build; the distribution registry and go-containerregistry's registry (referrers API);
#           images pushed with crane and signed with cosign (legacy .sig on the first, bundles on the
#           second); a CA and a serving certificate; `registryx-guard serve --policy-dir`
#   1       cached admission over TLS: saturation (closed loop) and 500/1000/2000 per second (open loop),
#           HTTP/2 and HTTP/1.1, images by digest and by tag; a perf profile of the saturated server
#   6       one Pod of 20 cold images against one Pod of 1 cold image, through the server
#   4       resident memory of the server: idle, after the load, with 100,000 cached results
#   2       cold verification in-process (examples/verify_bench.rs), with and without 20 ms per
#           registry round trip; `registryx-guard verify` next to `cosign verify` (hyperfine)
#   3       Rego evaluations (benches/rego.rs) and the in-process admission path (benches/admission.rs)
#   5       policy propagation: tests/cluster/e2e.rs (kubectl apply -> first admission that obeys), and the
#           --policy-dir folder of the server above
#   7       the API server's reviews (success rate, p50/p99) while 64 other addresses flood the port
#           (examples/loadgen.rs crowd), next to the same without a flood
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../e2e/lib.sh
source "$ROOT/e2e/lib.sh"
trap cleanup EXIT

DURATION=${RXG_BENCH_SECONDS:-10}
OUT=${RXG_BENCH_OUT:-$ROOT/BENCHMARKS.md}
E2E_RUNS=${RXG_BENCH_E2E_RUNS:-3}
RATES=(500 1000 2000)
SATURATION_CONCURRENCY=32
COLD_IMAGES=100
FILL_AUTHORITIES=4
FILL_DIGESTS=${RXG_BENCH_FILL_DIGESTS:-25000} # x FILL_AUTHORITIES = 100,000 cached results
# Shapes of the runs, stated in results/config.env for BENCHMARKS.md as well.
WARMUP_S=1 H1_RATE_CONNECTIONS=16 RTT_MS=20 PERF_SERVER_HZ=1999 PERF_SERVER_S=5
HYPERFINE_WARMUP=3 HYPERFINE_RUNS=30 MANY_IMAGES=20 MANY_WARMUP=2 MANY_RUNS=10 PERF_CLI_RUNS=20
CROWD_ADDRESSES=64 CROWD_RATE=20 CROWD_TIMEOUT_S=3
# The renewing server renews each verified result after RENEW_AFTER_S (the default is 15 s, longer than a
# run); the fill server keeps results FILL_VERIFIED_MAX_AGE_S so that the whole fill stays cached.
RENEW_AFTER_S=1 RENEW_MAX_AGE_S=2 FILL_VERIFIED_MAX_AGE_S=3600
RESULTS=$RXG_WORK/results
mkdir -p "$RESULTS"
cd "$ROOT"

# note COMMAND...: notes COMMAND in results/commands.txt for BENCHMARKS.md ("$WORK" is the work folder,
# paths are relative to the repository); logged COMMAND...: notes it and runs it.
note() {
	printf '%q ' "$@" | sed -e "s|$RXG_WORK|\$WORK|g" -e "s|$ROOT/||g" -e 's/ $//' >>"$RESULTS/commands.txt"
	echo >>"$RESULTS/commands.txt"
}
logged() {
	note "$@"
	"$@"
}

for tool in registry ociregistry crane cosign; do
	command -v "$tool" >/dev/null || { echo "missing $tool: run 'make tools'" >&2; exit 1; }
done
for tool in hyperfine perf python3 openssl curl; do
	command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y ${tool/perf/linux-perf})" >&2; exit 1; }
done

# Other work on the machine skews every figure: the load average before this script adds its own says
# whether there was any.
loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)
say "Installing the bench's own tools (bench/peers.sh tools)"
bash "$ROOT/bench/peers.sh" tools
say "Building release binaries"
cargo build --release --locked --bin registryx-guard --example loadgen --example verify_bench
BIN=$ROOT/target/release/registryx-guard
LOADGEN=$ROOT/target/release/examples/loadgen
VERIFY_BENCH=$ROOT/target/release/examples/verify_bench

# --- machine -----------------------------------------------------------------------------------------
{
	echo "nproc=$(nproc)"
	echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
	echo "kernel=$(uname -r)"
	echo "rustc=$(rustc --version)"
	echo "cosign=$(cosign version 2>/dev/null | awk '/GitVersion/ {print $2}')"
	echo "registry=$(registry --version 2>/dev/null | awk '{print $NF}')"
	echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
	echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
	echo "duration=$DURATION"
	echo "loadavg_start=$loadavg_before"
} >"$RESULTS/machine.env"

# --- what the run sets, and what it is measured against ------------------------------------------------
# render.py states every such value from here, never from a literal of its own: the loads' shapes, the
# targets of BENCHMARKS.md's summary, and the server defaults its explanations rely on (src/verify/mod.rs
# VerifierConfig, src/registry/client RegistryConfig, src/policy/dir.rs POLL_INTERVAL).
{
	echo "rates=${RATES[*]}"
	echo "warmup_s=$WARMUP_S"
	echo "saturation_concurrency=$SATURATION_CONCURRENCY"
	echo "h1_rate_connections=$H1_RATE_CONNECTIONS"
	echo "review_timeout_s=10"
	echo "cold_images=$COLD_IMAGES"
	echo "cold_pod_sizes=1 20"
	echo "cold_pod_runs=3"
	echo "rtt_ms=$RTT_MS"
	echo "fill_authorities=$FILL_AUTHORITIES"
	echo "fill_digests=$FILL_DIGESTS"
	echo "perf_server_hz=$PERF_SERVER_HZ"
	echo "perf_server_s=$PERF_SERVER_S"
	echo "perf_cli_runs=$PERF_CLI_RUNS"
	echo "hyperfine_warmup=$HYPERFINE_WARMUP"
	echo "hyperfine_runs=$HYPERFINE_RUNS"
	echo "many_images=$MANY_IMAGES"
	echo "many_warmup=$MANY_WARMUP"
	echo "many_runs=$MANY_RUNS"
	echo "cpu_tick_ms=10"
	echo "crowd_addresses=$CROWD_ADDRESSES"
	echo "crowd_rate=$CROWD_RATE"
	echo "crowd_timeout_s=$CROWD_TIMEOUT_S"
	echo "crowd_body_sent_kib=192"
	echo "crowd_body_announced_mib=2"
	echo "target_rps=10000"
	echo "target_p99_ms=2"
	echo "target_rate=2000"
	echo "target_idle_mib=64"
	echo "target_filled_mib=200"
	echo "target_cached_results=100000"
	echo "target_propagation_s=1"
	echo "target_cli_ratio=0.5"
	echo "target_many_ratio=2"
	echo "target_round_trips=3"
	echo "quiet_loadavg=0.5"
	echo "registry_in_flight=64"
	echo "verifications_per_registry=32"
	echo "tag_cache_s=10"
	echo "refused_ttl_s=30"
	echo "verified_max_age_s=30"
	echo "revalidate_after_s=15"
	echo "renew_after_s=$RENEW_AFTER_S"
	echo "renew_max_age_s=$RENEW_MAX_AGE_S"
	echo "fill_verified_max_age_s=$FILL_VERIFIED_MAX_AGE_S"
	echo "policy_dir_poll_ms=500"
	echo "referrers_memory_min=5"
	echo "referrers_misses=3"
} >"$RESULTS/config.env"

# --- peers --------------------------------------------------------------------------------------------
# policy-controller's policy-tester and the Kyverno CLI, built from their pinned modules (bench/peers.sh;
# minutes the first time, seconds after). A peer that does not build is skipped with its reason.
say "Building the peers (bench/peers.sh)"
declare -A PEER=()
while read -r status name rest; do
	if [[ $status == ok ]]; then
		PEER[$name]=$rest
	else
		echo "skipping peer $name: $rest" | tee -a "$RESULTS/peers-skipped.txt" >&2
	fi
done < <(bash "$ROOT/bench/peers.sh" build)

# --- registries, images, signatures ------------------------------------------------------------------
say "Starting the registries"
start_registry
DIST=$REGISTRY DIST_PID=${RXG_PIDS[-1]}
port=$(free_port)
ociregistry -addr "127.0.0.1:$port" >"$RXG_WORK/ociregistry.log" 2>&1 &
RXG_PIDS+=($!)
OCI=127.0.0.1:$port OCI_PID=$!
wait_for "ociregistry" 20 curl -fsS "http://$OCI/v2/"

# push HOST REPOSITORY TAG: a one-layer image whose digest is unique to (host, repository, tag).
push() {
	local dir=$RXG_WORK/images/$1/$2/$3
	mkdir -p "$dir/root"
	echo "$1/$2:$3 $RANDOM$RANDOM" >"$dir/root/seed"
	tar -C "$dir/root" -cf "$dir/layer.tar" seed
	crane append --insecure --new_layer "$dir/layer.tar" --new_tag "$1/$2:$3" >/dev/null 2>"$dir/crane.log" ||
		{ cat "$dir/crane.log" >&2; return 1; }
}
# push_many HOST REPOSITORY COUNT: tags 1..COUNT, four pushes at a time; prints the references. (A bare
# `wait` would also wait for the registries, which run in the background of this shell too.)
push_many() {
	local i pids=()
	for ((i = 1; i <= $3; i++)); do
		push "$1" "$2" "$i" &
		pids+=($!)
		if ((${#pids[@]} == 4)) || ((i == $3)); then
			for pid in "${pids[@]}"; do wait "$pid"; done
			pids=()
		fi
	done
	for ((i = 1; i <= $3; i++)); do echo "$1/$2:$i"; done
}

say "Pushing images: 3 for the Pod, $COLD_IMAGES cold ones on each registry"
for repository in bench/init bench/app bench/sidecar; do push "$DIST" "$repository" 1; done
push_many "$DIST" cold/img "$COLD_IMAGES" >"$RXG_WORK/cold-legacy.txt"
push_many "$OCI" cold/img "$COLD_IMAGES" >"$RXG_WORK/cold-bundle.txt"

say "Signing them with cosign (legacy .sig on $DIST, sigstore bundles as referrers on $OCI)"
# cosign's TUF cache and Docker config stay in the work folder; so does registryx-guard's Docker config.
export COSIGN_PASSWORD=bench DOCKER_CONFIG=$RXG_WORK/home/docker TUF_ROOT=$RXG_WORK/home/tuf
mkdir -p "$RXG_WORK/home"
cosign() { HOME=$RXG_WORK/home command cosign "$@"; }
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
sign() {
	local format=$1
	shift
	cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
		--new-bundle-format="$format" "$@" >"$RXG_WORK/sign.log" 2>&1 || { cat "$RXG_WORK/sign.log" >&2; return 1; }
}
sign false "$DIST/bench/init:1" "$DIST/bench/app:1" "$DIST/bench/sidecar:1"
mapfile -t legacy <"$RXG_WORK/cold-legacy.txt"
mapfile -t bundle <"$RXG_WORK/cold-bundle.txt"
sign false "${legacy[@]}"
sign true "${bundle[@]}"

# --- policies, TLS, server ---------------------------------------------------------------------------
indent() { sed 's/^/          /' "$1"; }
mkdir -p "$RXG_WORK/policies"
for spec in "legacy $DIST/bench/** $DIST/cold/**" "bundle $OCI/cold/**"; do
	read -r name globs <<<"$spec"
	{
		echo "apiVersion: registryx.io/v1alpha1"
		echo "kind: ImageSigningPolicy"
		echo "metadata: {name: bench-$name}"
		echo "spec:"
		echo "  images: [$(printf '"%s",' $globs | sed 's/,$//')]"
		# The load generator sends its by-tag reviews straight to /validate, with no mutating webhook in
		# front: a pinning policy would refuse them as unpinned, so these policies record instead of pin.
		echo "  mutateDigest: false"
		echo "  registry: {insecure: true}"
		echo "  authorities:"
		echo "    - name: bench-key"
		echo "      key:"
		echo "        data: |"
		indent "$RXG_WORK/cosign.pub"
	} >"$RXG_WORK/policies/$name.yaml"
done
# The cache filler's policy: FILL_AUTHORITIES keys, so that each unsigned digest leaves that many results;
# on the in-memory registry, which answers faster than the distribution registry's filesystem, so that
# the fill ends before its first results expire (refusals are cached for 30 s).
{
	echo "apiVersion: registryx.io/v1alpha1"
	echo "kind: ImageSigningPolicy"
	echo "metadata: {name: bench-fill}"
	echo "spec:"
	echo "  images: [\"$OCI/fill/**\"]"
	echo "  mutateDigest: false"
	echo "  registry: {insecure: true}"
	echo "  authorities:"
	for ((i = 1; i <= FILL_AUTHORITIES; i++)); do
		openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl ec -pubout 2>/dev/null >"$RXG_WORK/fill-$i.pub"
		echo "    - name: fill-key-$i"
		echo "      key:"
		echo "        data: |"
		indent "$RXG_WORK/fill-$i.pub"
	done
} >"$RXG_WORK/policies/fill.yaml"
# The same for verified results: FILL_AUTHORITIES keys whose private halves `loadgen fill --sign-with`
# signs every pushed image with, so that each digest leaves that many verified results.
{
	echo "apiVersion: registryx.io/v1alpha1"
	echo "kind: ImageSigningPolicy"
	echo "metadata: {name: bench-fill-signed}"
	echo "spec:"
	echo "  images: [\"$OCI/signed-fill/**\"]"
	echo "  mutateDigest: false"
	echo "  registry: {insecure: true}"
	echo "  authorities:"
	for ((i = 1; i <= FILL_AUTHORITIES; i++)); do
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$RXG_WORK/signed-fill-$i.key" 2>/dev/null
		openssl pkey -in "$RXG_WORK/signed-fill-$i.key" -pubout -out "$RXG_WORK/signed-fill-$i.pub" 2>/dev/null
		echo "    - name: signed-fill-key-$i"
		echo "      key:"
		echo "        data: |"
		indent "$RXG_WORK/signed-fill-$i.pub"
	done
} >"$RXG_WORK/policies/fill-signed.yaml"

say "Making a CA and the server's certificate"
tls=$RXG_WORK/tls
make_tls "$tls" bench-ca

# start_server NAME [FLAGS...]: registryx-guard serve over the policy folder; sets SERVER_PID, URL, PROBES.
start_server() {
	local name=$1 port probes
	shift
	port=$(free_port) probes=$(free_port)
	local command=("$BIN" serve --policy-dir "$RXG_WORK/policies" --tls-cert "$tls/tls.crt" --tls-key "$tls/tls.key"
		--listen "127.0.0.1:$port" --probes-listen "127.0.0.1:$probes" "$@")
	note "${command[@]}"
	# Not through `logged`: a function in the background is a subshell, and $! must be the server.
	"${command[@]}" >"$RXG_WORK/$name.log" 2>&1 &
	SERVER_PID=$!
	RXG_PIDS+=("$SERVER_PID")
	URL="https://127.0.0.1:$port/validate?timeout=10s"
	PROBES="http://127.0.0.1:$probes"
	wait_for "registryx-guard to be ready" 30 curl -fsS "$PROBES/readyz"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system) of process $1 so far, in ticks of 10 ms.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
metric() { curl -fsS "$PROBES/metrics" | awk -v m="$1" '$1 == m || $1 == m"_total" {print $2}'; }

say "Starting registryx-guard serve (release)"
start_server serve
sleep 2
echo "idle_rss_kib=$(rss_kib "$SERVER_PID")" >"$RESULTS/memory.env"

# Review bodies: tests/data/pod-create.json with the three signed images, by digest and by tag.
review() {
	sed -e "s|INIT_IMAGE|$1|" -e "s|APP_IMAGE|$2|" -e "s|SIDECAR_IMAGE|$3|" tests/data/pod-create.json
}
by_digest() { echo "${1%:*}@$(crane digest --insecure "$1")"; }
review "$DIST/bench/init:1" "$DIST/bench/app:1" "$DIST/bench/sidecar:1" >"$RXG_WORK/review-tag.json"
review "$(by_digest "$DIST/bench/init:1")" "$(by_digest "$DIST/bench/app:1")" \
	"$(by_digest "$DIST/bench/sidecar:1")" >"$RXG_WORK/review-digest.json"

# --- 1. cached admission -----------------------------------------------------------------------------
say "1. Cached admission by digest: warming the cache with one review of each body"
logged "$LOADGEN" once --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/review-digest.json" \
	--body "$RXG_WORK/review-tag.json" >"$RESULTS/warm.json"
python3 - "$RESULTS/warm.json" <<-'PY'
	import json, sys
	for r in json.load(open(sys.argv[1])):
	    assert r["allowed"] is True, f"the warm-up review was refused: {r}"
PY
requests_before_load=$(metric registryx_guard_registry_requests)

# load LABEL BODY HTTP [load.py flags...]: one bounded run (vegeta), appended to results/load.jsonl.
LOAD=(python3 "$ROOT/bench/load.py")
load() {
	local label=$1 body=$2 http=$3
	shift 3
	echo "  $label"
	logged "${LOAD[@]}" --label "$label" --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/review-$body.json" \
		--http "$http" --duration "$DURATION" --warmup "$WARMUP_S" --server-pid "$SERVER_PID" "$@" >>"$RESULTS/load.jsonl"
}
# runs BODY: saturation over both protocols, then each fixed rate.
runs() {
	load "$1 h2 saturation" "$1" 2 --connections 2 --concurrency "$SATURATION_CONCURRENCY"
	load "$1 h1 saturation" "$1" 1 --concurrency "$SATURATION_CONCURRENCY"
	for rate in "${RATES[@]}"; do
		load "$1 h2 $rate/s" "$1" 2 --connections 1 --rate "$rate"
		load "$1 h1 $rate/s" "$1" 1 --connections "$H1_RATE_CONNECTIONS" --rate "$rate"
	done
}
runs digest

say "1. Profile of the saturated server (perf, 5 s, by digest over HTTP/2)"
logged "${LOAD[@]}" --label "profiled" --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/review-digest.json" \
	--http 2 --connections 2 --concurrency "$SATURATION_CONCURRENCY" --duration 7 --warmup 1 \
	--server-pid "$SERVER_PID" >"$RESULTS/profiled.json" &
loadgen_pid=$!
sleep 1.5
logged perf record -F "$PERF_SERVER_HZ" -p "$SERVER_PID" -o "$RXG_WORK/perf.data" -- sleep "$PERF_SERVER_S" >/dev/null 2>&1
wait "$loadgen_pid"
perf report -i "$RXG_WORK/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.01 2>/dev/null |
	grep -v '^#' | grep -v '^$' >"$RESULTS/perf.txt" || true

# Logging's share: the same saturation run against a server that logs warnings only.
say "1. The same saturation run with --log-level warn"
main_pid=$SERVER_PID main_url=$URL main_probes=$PROBES
start_server serve-quiet --log-level warn
"$LOADGEN" once --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/review-digest.json" >/dev/null
load "digest h2 saturation, --log-level warn" digest 2 --connections 2 --concurrency "$SATURATION_CONCURRENCY"
kill "$SERVER_PID"

# Stale-while-revalidate's cost: the same saturation run while every verified result is renewed in the
# background each RENEW_AFTER_S (a review never waits for it; the renewals are counted).
say "1. The same saturation run with verified results renewed every ${RENEW_AFTER_S} s"
start_server serve-renewing --revalidate-after-seconds "$RENEW_AFTER_S" --verified-max-age-seconds "$RENEW_MAX_AGE_S"
"$LOADGEN" once --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/review-digest.json" >/dev/null
load "digest h2 saturation, renewing" digest 2 --connections 2 --concurrency "$SATURATION_CONCURRENCY"
{
	echo "renewing_renewed=$(metric 'registryx_guard_revalidations_total{outcome="renewed"}')"
	echo "renewing_misses=$(metric 'registryx_guard_verification_cache_lookups_total{result="miss"}')"
	echo "renewing_registry_requests=$(metric registryx_guard_registry_requests)"
} >>"$RESULTS/memory.env"
kill "$SERVER_PID"
SERVER_PID=$main_pid URL=$main_url PROBES=$main_probes

# By tag last: past its saturation, reviews queue in the server until their deadline (10 s), and that
# backlog must not leak into the other measurements.
say "1. Cached admission by tag"
runs tag
echo "registry_requests_during_load=$(($(metric registryx_guard_registry_requests) - requests_before_load))" >>"$RESULTS/memory.env"
sleep 12
echo "after_load_rss_kib=$(rss_kib "$SERVER_PID")" >>"$RESULTS/memory.env"

# --- 6. many images at once --------------------------------------------------------------------------
say "6. Cold Pods through the server: 1 image against 20 images"
# Pods of images the server has not seen: the cold legacy images (verify_bench, below, is another process).
pod_of() { "$LOADGEN" review "$@"; }
next=0
for rep in 1 2 3; do
	for size in 1 20; do
		pod_of "${legacy[@]:next:size}" >"$RXG_WORK/pod-$size-$rep.json"
		next=$((next + size))
		before=$(metric registryx_guard_registry_requests) cpu_before=$(cpu_ticks "$DIST_PID")
		logged "$LOADGEN" once --label "cold $size" --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/pod-$size-$rep.json" \
			>"$RXG_WORK/once.json"
		after=$(metric registryx_guard_registry_requests) cpu_after=$(cpu_ticks "$DIST_PID")
		python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))[0]; r["registry_requests"] = int(sys.argv[2]); r["registry_cpu_ms"] = 10 * int(sys.argv[3]); print(json.dumps(r))' \
			"$RXG_WORK/once.json" "$((after - before))" "$((cpu_after - cpu_before))" >>"$RESULTS/cold-pods.jsonl"
	done
done
# The last 20-image Pod again: now every image is cached (its tags resolved less than 10 s before).
before=$(metric registryx_guard_registry_requests)
logged "$LOADGEN" once --label "cached 20" --url "$URL" --ca "$tls/ca.crt" --body "$RXG_WORK/pod-20-3.json" \
	>"$RXG_WORK/once.json"
after=$(metric registryx_guard_registry_requests)
python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))[0]; r["registry_requests"] = int(sys.argv[2]); print(json.dumps(r))' \
	"$RXG_WORK/once.json" "$((after - before))" >>"$RESULTS/cold-pods.jsonl"

# --- 4. memory with 100,000 cached results -----------------------------------------------------------
say "4. Filling the cache: $FILL_DIGESTS unsigned digests x $FILL_AUTHORITIES authorities"
misses_before=$(metric 'registryx_guard_verification_cache_lookups_total{result="miss"}')
errors_before=$(metric registryx_guard_registry_errors)
logged "$LOADGEN" fill --url "$URL" --ca "$tls/ca.crt" --image-prefix "$OCI/fill/app" --digests "$FILL_DIGESTS" \
	--per-review 50 --concurrency 8 >"$RESULTS/fill.json"
{
	echo "filled_rss_kib=$(rss_kib "$SERVER_PID")"
	echo "filled_hwm_kib=$(hwm_kib "$SERVER_PID")"
	echo "fill_results=$(($(metric 'registryx_guard_verification_cache_lookups_total{result="miss"}') - misses_before))"
	echo "fill_registry_errors=$(($(metric registryx_guard_registry_errors) - errors_before))"
} >>"$RESULTS/memory.env"

say "4. Filling a fresh server's cache: $FILL_DIGESTS signed digests x $FILL_AUTHORITIES authorities"
first_server=$SERVER_PID first_url=$URL first_probes=$PROBES
start_server verified-fill --verified-max-age-seconds "$FILL_VERIFIED_MAX_AGE_S" --revalidate-after-seconds 0
sleep 1
echo "verified_idle_rss_kib=$(rss_kib "$SERVER_PID")" >>"$RESULTS/memory.env"
misses_before=$(metric 'registryx_guard_verification_cache_lookups_total{result="miss"}')
errors_before=$(metric registryx_guard_registry_errors)
sign_with=()
for ((i = 1; i <= FILL_AUTHORITIES; i++)); do sign_with+=(--sign-with "$RXG_WORK/signed-fill-$i.key"); done
logged "$LOADGEN" fill --url "$URL" --ca "$tls/ca.crt" --image-prefix "$OCI/signed-fill/app" --digests "$FILL_DIGESTS" \
	--per-review 50 --concurrency 8 --seed signed "${sign_with[@]}" >"$RESULTS/fill-verified.json"
{
	echo "verified_rss_kib=$(rss_kib "$SERVER_PID")"
	echo "verified_hwm_kib=$(hwm_kib "$SERVER_PID")"
	echo "verified_results=$(($(metric 'registryx_guard_verification_cache_lookups_total{result="miss"}') - misses_before))"
	echo "verified_registry_errors=$(($(metric registryx_guard_registry_errors) - errors_before))"
} >>"$RESULTS/memory.env"
kill "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=$first_server URL=$first_url PROBES=$first_probes

# --- 2. cold verification ----------------------------------------------------------------------------
say "2. Cold verification in-process (examples/verify_bench.rs)"
for rtt in 0 "$RTT_MS"; do
	logged "$VERIFY_BENCH" --label legacy --policy "$RXG_WORK/policies/legacy.yaml" --images "$RXG_WORK/cold-legacy.txt" \
		--rtt-ms "$rtt" --registry-pid "$DIST_PID" >>"$RESULTS/cold.jsonl"
	logged "$VERIFY_BENCH" --label bundle --policy "$RXG_WORK/policies/bundle.yaml" --images "$RXG_WORK/cold-bundle.txt" \
		--rtt-ms "$rtt" --registry-pid "$OCI_PID" >>"$RESULTS/cold.jsonl"
done
# The same bundles named by digest: no tag to resolve, so the referrers path's own round trips.
while read -r image; do by_digest "$image"; done <"$RXG_WORK/cold-bundle.txt" >"$RXG_WORK/cold-bundle-digest.txt"
logged "$VERIFY_BENCH" --label bundle-digest --policy "$RXG_WORK/policies/bundle.yaml" \
	--images "$RXG_WORK/cold-bundle-digest.txt" --rtt-ms "$RTT_MS" --registry-pid "$OCI_PID" >>"$RESULTS/cold.jsonl"

say "2. registryx-guard verify next to cosign verify (hyperfine)"
# The peers' policies for the legacy image: the same key, no transparency log, nothing but the registry.
peers=$RXG_WORK/peers
mkdir -p "$peers"
{
	echo "apiVersion: policy.sigstore.dev/v1beta1"
	echo "kind: ClusterImagePolicy"
	echo "metadata: {name: bench-key}"
	echo "spec:"
	echo "  images: [{glob: \"$DIST/bench/**\"}]"
	echo "  authorities:"
	echo "    - name: bench-key"
	echo "      key:"
	echo "        hashAlgorithm: sha256"
	echo "        data: |"
	indent "$RXG_WORK/cosign.pub"
} >"$peers/cip.yaml"
{
	echo "apiVersion: kyverno.io/v1"
	echo "kind: ClusterPolicy"
	echo "metadata: {name: bench-key}"
	echo "spec:"
	echo "  background: false"
	echo "  rules:"
	echo "    - name: verify-signature"
	echo "      match: {any: [{resources: {kinds: [Pod]}}]}"
	echo "      verifyImages:"
	echo "        - imageReferences: [\"$DIST/bench/*\"]"
	echo "          failureAction: Enforce"
	echo "          mutateDigest: false"
	echo "          verifyDigest: false"
	echo "          required: true"
	echo "          useCache: false"
	echo "          imageRegistryCredentials: {allowInsecureRegistry: true}"
	echo "          attestors:"
	echo "            - count: 1"
	echo "              entries:"
	echo "                - keys:"
	echo "                    signatureAlgorithm: sha256"
	echo "                    rekor: {url: \"https://rekor.sigstore.dev\", ignoreTlog: true}"
	echo "                    ctlog: {ignoreSCT: true}"
	echo "                    publicKeys: |-"
	sed 's/^/                      /' "$RXG_WORK/cosign.pub"
} >"$peers/kyverno.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: default}\nspec:\n  containers: [{name: app, image: "%s"}]\n' \
	"$DIST/bench/app:1" >"$peers/pod.yaml"

# compare NAME IMAGE POLICY NEW_BUNDLE [hyperfine -n NAME COMMAND...]: registryx-guard verify, cosign verify
# and the given peers on one image, side by side in one hyperfine run.
compare() {
	local name=$1 image=$2 policy=$3 new_bundle=$4
	shift 4
	logged env HOME="$RXG_WORK/home" hyperfine -N --warmup "$HYPERFINE_WARMUP" --runs "$HYPERFINE_RUNS" --export-json "$RESULTS/hyperfine-$name.json" \
		-n "registryx-guard verify" "$BIN verify $image --policy $policy" \
		-n "cosign verify" "cosign verify --key $RXG_WORK/cosign.pub --insecure-ignore-tlog=true --offline=true --new-bundle-format=$new_bundle $image" \
		"$@" >"$RXG_WORK/hyperfine-$name.log" 2>&1 || { cat "$RXG_WORK/hyperfine-$name.log" >&2; return 1; }
}
legacy_peers=()
[[ -n ${PEER[policy-tester]:-} ]] &&
	legacy_peers+=(-n "policy-tester" "${PEER[policy-tester]} --policy $peers/cip.yaml --image $DIST/bench/app:1")
[[ -n ${PEER[kyverno]:-} ]] &&
	legacy_peers+=(-n "kyverno apply" "${PEER[kyverno]} apply $peers/kyverno.yaml --resource $peers/pod.yaml")
compare legacy "$DIST/bench/app:1" "$RXG_WORK/policies/legacy.yaml" false "${legacy_peers[@]}"
compare bundle "${bundle[0]}" "$RXG_WORK/policies/bundle.yaml" true
# Many images in one process: 20 cold images against one, and against one `cosign verify` of the 20.
twenty=("${legacy[@]:0:MANY_IMAGES}")
logged env HOME="$RXG_WORK/home" hyperfine -N --warmup "$MANY_WARMUP" --runs "$MANY_RUNS" --export-json "$RESULTS/hyperfine-many.json" \
	-n "registryx-guard verify, 1 image" "$BIN verify ${twenty[0]} --policy $RXG_WORK/policies/legacy.yaml" \
	-n "registryx-guard verify, $MANY_IMAGES images" "$BIN verify ${twenty[*]} --policy $RXG_WORK/policies/legacy.yaml" \
	-n "cosign verify, $MANY_IMAGES images" "cosign verify --key $RXG_WORK/cosign.pub --insecure-ignore-tlog=true --offline=true --new-bundle-format=false ${twenty[*]}" \
	>"$RXG_WORK/hyperfine-many.log" 2>&1 || { cat "$RXG_WORK/hyperfine-many.log" >&2; exit 1; }
# What the registry itself spends on them: its CPU time over one more run of each (new processes, cold).
for count in 1 "$MANY_IMAGES"; do
	before=$(cpu_ticks "$DIST_PID")
	"$BIN" verify "${twenty[@]:0:count}" --policy "$RXG_WORK/policies/legacy.yaml" >/dev/null
	echo "registry_cpu_ms_$count=$((10 * ($(cpu_ticks "$DIST_PID") - before)))"
done >"$RESULTS/many.env"
# Process start: an image no policy governs (refused without a network call) next to --version.
logged hyperfine -N --warmup 3 --runs 30 -i --export-json "$RESULTS/hyperfine-startup.json" \
	-n "verify, no policy governs the image" "$BIN verify elsewhere.example/app:1 --policy $RXG_WORK/policies/legacy.yaml" \
	-n "version" "$BIN --version" >"$RXG_WORK/hyperfine-startup.log" 2>&1 ||
	{ cat "$RXG_WORK/hyperfine-startup.log" >&2; exit 1; }

say "2. Where registryx-guard verify spends its time (perf over 20 runs)"
logged perf record -F 10000 -o "$RXG_WORK/cli.data" -- bash -c \
	"for i in \$(seq $PERF_CLI_RUNS); do $BIN verify $DIST/bench/app:1 --policy $RXG_WORK/policies/legacy.yaml >/dev/null; done" \
	>/dev/null 2>&1
perf report -i "$RXG_WORK/cli.data" --stdio --no-children --comms registryx-guard,tokio-runtime-w \
	--percentage relative --sort dso,symbol --percent-limit 0.01 2>/dev/null | grep -v '^#' | grep -v '^$' \
	>"$RESULTS/perf-cli.txt" || true

# --- 3. Rego and the in-process admission path -------------------------------------------------------
say "3. Criterion benches: benches/rego.rs and benches/admission.rs"
# Estimates of earlier runs must not stand in for this one's: render.py reads whatever is there.
rm -rf target/criterion
logged cargo bench --locked --bench rego --bench admission -- --warm-up-time 1 --measurement-time 4 \
	>"$RXG_WORK/criterion.log" 2>&1 || { tail -40 "$RXG_WORK/criterion.log" >&2; exit 1; }
cp "$RXG_WORK/criterion.log" "$RESULTS/criterion.log"

# --- 5. policy propagation ---------------------------------------------------------------------------
say "5. Policy propagation through the --policy-dir folder of the server above"
# Trust another key for bench/**: the first review refused after the file is replaced marks the change.
other=$RXG_WORK/other
mkdir -p "$other"
(cd "$other" && COSIGN_PASSWORD=other cosign generate-key-pair >/dev/null 2>&1)
sed "/BEGIN PUBLIC KEY/,/END PUBLIC KEY/d" "$RXG_WORK/policies/legacy.yaml" >"$other/legacy.yaml"
indent "$other/cosign.pub" >>"$other/legacy.yaml"
python3 - "$LOADGEN" "$URL" "$tls/ca.crt" "$RXG_WORK/review-digest.json" "$other/legacy.yaml" \
	"$RXG_WORK/policies/legacy.yaml" >"$RESULTS/policy-dir.json" <<-'PY'
	import json, os, subprocess, sys, time
	loadgen, url, ca, body, new, target = sys.argv[1:]
	def allowed():
	    out = subprocess.run([loadgen, "once", "--url", url, "--ca", ca, "--body", body],
	                         check=True, capture_output=True, text=True).stdout
	    return json.loads(out)[0]["allowed"]
	assert allowed(), "the review must be admitted before the change"
	tmp = target + ".new"
	with open(new) as src, open(tmp, "w") as dst:
	    dst.write(src.read())
	started = time.monotonic()
	os.replace(tmp, target)
	polls = 0
	while allowed():
	    polls += 1
	    assert time.monotonic() - started < 10, "the policy change never took effect"
	print(json.dumps({"seconds": round(time.monotonic() - started, 3), "polls": polls}))
PY

if ((E2E_RUNS > 0)); then
	say "5. Policy propagation in a cluster: tests/cluster/e2e.rs, $E2E_RUNS runs"
	for ((run = 1; run <= E2E_RUNS; run++)); do
		logged env -u DOCKER_CONFIG -u TUF_ROOT -u COSIGN_PASSWORD cargo test --locked --test cluster -- e2e:: --nocapture \
			>"$RXG_WORK/e2e-$run.log" 2>&1 ||
			{ tail -40 "$RXG_WORK/e2e-$run.log" >&2; exit 1; }
		grep -h "policy change" "$RXG_WORK/e2e-$run.log" >>"$RESULTS/e2e.txt"
	done
fi

# --- 7. crowds ----------------------------------------------------------------------------------------
# The API server's reviews (from 127.0.0.1, each on a new connection, timeout=3s) while 64 other loopback
# addresses flood a fresh server: no flood, never-TLS connections beyond the connection cap, stalled
# handshakes beyond it, stalled bodies beyond the body budget.
say "7. The API server's reviews while 64 other addresses flood the port"
main_pid=$SERVER_PID main_url=$URL main_probes=$PROBES
start_server crowd
crowd_url=${URL/timeout=10s/timeout=${CROWD_TIMEOUT_S}s}
"$LOADGEN" once --url "$crowd_url" --ca "$tls/ca.crt" --body "$RXG_WORK/review-digest.json" >/dev/null
for flood in "none 0" "idle 17" "handshake 17" "body 2"; do
	read -r kind per_address <<<"$flood"
	echo "  $kind"
	logged "$LOADGEN" crowd --label "$kind" --url "$crowd_url" --ca "$tls/ca.crt" --http 1 --threads 2 \
		--body "$RXG_WORK/review-digest.json" --flood "$kind" --addresses "$CROWD_ADDRESSES" --per-address "$per_address" \
		--reviews $((DURATION * CROWD_RATE)) --rate "$CROWD_RATE" --timeout "$CROWD_TIMEOUT_S" >>"$RESULTS/crowd.jsonl"
	# The crowd's connections close with its process; its last bodies end on the server within 5 s.
	sleep 6
done
kill "$SERVER_PID"
SERVER_PID=$main_pid URL=$main_url PROBES=$main_probes

echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.env"
echo "elapsed_s=$SECONDS" >>"$RESULTS/machine.env"
say "Writing $OUT"
# The run's figures as one JSON (kept beside the report, so that the template can be rendered again
# without a run), then the report from it.
python3 "$ROOT/bench/render.py" collect "$RESULTS" "$ROOT" >"$ROOT/bench/results.json"
python3 "$ROOT/bench/render.py" render "$ROOT/bench/results.json" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "raw results: $RESULTS$([[ -n ${RXG_KEEP_WORK:-} ]] || echo ' (removed on exit; RXG_KEEP_WORK=1 keeps them)')"
