#!/usr/bin/env bash
# The soak (`make soak`, BENCHMARKS.md section 8): one registryx-guard server under mixed load for
# RXG_SOAK_SECONDS (default 3600): cached reviews by digest and by tag, reviews of an image at a registry
# that never answers, unmatched images, and a policy change every minute. RSS is sampled every 10 s into
# $RXG_SOAK_OUT (default bench/soak-rss.csv); the summary goes to bench/soak-results.md, which
# bench/render.py copies into BENCHMARKS.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
trap cleanup EXIT

seconds=${RXG_SOAK_SECONDS:-3600}
out=${RXG_SOAK_OUT:-$RXG_ROOT/bench/soak-rss.csv}
results=$RXG_ROOT/bench/soak-results.md
profile=${RXG_SOAK_PROFILE:-release}

say "Installing the bench's own tools (bench/peers.sh tools)"
bash "$RXG_ROOT/bench/peers.sh" tools
say "Building registryx-guard and the load generator ($profile)"
flag=()
[[ $profile == release ]] && flag=(--release)
(cd "$RXG_ROOT" && cargo build --quiet --locked "${flag[@]}" --bin registryx-guard --example loadgen)
bin=$RXG_ROOT/target/$profile
[[ $profile == dev ]] && bin=$RXG_ROOT/target/debug

say "A registry with signed images, and one that never answers"
start_registry
signed=$(push_image soak/app v1 "soak $RANDOM")
export COSIGN_PASSWORD=soak
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
	--new-bundle-format=false "$signed" >/dev/null 2>&1
digest=$(crane digest --insecure "$signed")
hanging_port=$(free_port)
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True:
    c, _ = s.accept(); held.append(c)
' "$hanging_port" &
RXG_PIDS+=($!)

say "Policies, a certificate, the server"
mkdir -p "$RXG_WORK/policies" "$RXG_WORK/tls"
write_policy() { # write_policy NAME HOST MODE
	{
		printf 'apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: %s}\nspec:\n' "$1"
		printf '  images: ["%s/**"]\n  mode: %s\n  mutateDigest: false\n  registry: {insecure: true}\n' "$2" "$3"
		printf '  authorities:\n    - name: soak-key\n      key:\n        data: |\n'
		sed 's/^/          /' "$RXG_WORK/cosign.pub"
	} >"$RXG_WORK/policies/$1.yaml"
}
write_policy healthy "$REGISTRY" enforce
write_policy hanging "127.0.0.1:$hanging_port" enforce
tls=$RXG_WORK/tls
make_tls "$tls" soak-ca
port=$(free_port) probes=$(free_port)
RXG_LOG=warn "$bin/registryx-guard" serve --policy-dir "$RXG_WORK/policies" --tls-cert "$tls/tls.crt" \
	--tls-key "$tls/tls.key" --listen "127.0.0.1:$port" --probes-listen "127.0.0.1:$probes" \
	2>"$RXG_WORK/server.log" &
server=$!
RXG_PIDS+=("$server")
wait_for "the server" 30 curl -fsS "http://127.0.0.1:$probes/readyz"

review() { "$bin/examples/loadgen" review "$@"; } # review IMAGE... : a Pod of these images
review "${signed%:*}@$digest" "${signed%:*}@$digest" >"$RXG_WORK/by-digest.json"
review "$signed" >"$RXG_WORK/by-tag.json"
review "127.0.0.1:$hanging_port/soak/app:v1" "$signed" >"$RXG_WORK/hanging.json"
review "elsewhere.example/app:1" >"$RXG_WORK/unmatched.json"

rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
echo "seconds,rss_kib" >"$out"
start_rss=$(rss)
say "Soaking for ${seconds}s (RSS at start: $((start_rss / 1024)) MiB)"
load() { # load BODY RATE
	python3 "$RXG_ROOT/bench/load.py" --url "https://127.0.0.1:$port/validate?timeout=3s" --ca "$tls/ca.crt" \
		--body "$1" --rate "$2" --duration "$seconds" --warmup 0 --label "$(basename "$1" .json)" \
		>"$RXG_WORK/$(basename "$1" .json).out" 2>&1 &
	RXG_PIDS+=($!)
}
load "$RXG_WORK/by-digest.json" 150
load "$RXG_WORK/by-tag.json" 40
load "$RXG_WORK/hanging.json" 5
load "$RXG_WORK/unmatched.json" 20
began=$SECONDS max=$start_rss changes=0
while ((SECONDS - began < seconds)); do
	sleep 10
	now=$(rss)
	((now > max)) && max=$now
	echo "$((SECONDS - began)),$now" >>"$out"
	if (((SECONDS - began) / 60 > changes)); then
		changes=$((changes + 1))
		mode=enforce
		((changes % 2)) && mode=warn
		write_policy healthy "$REGISTRY" "$mode"
	fi
done
sleep 20 # the load generators drain
end_rss=$(rss)
summary() {
	python3 - "$1" <<-'PY' 2>/dev/null || tail -1 "$1"
		import json, sys
		d = json.load(open(sys.argv[1]))
		p99 = (d.get("latency_us") or {}).get("p99")
		print(f'{d["label"]}: {d["completed"]} reviews ({d["allowed"]} allowed, {d["refused"]} refused), {d["errors"]} errors, p99 {p99} µs')
	PY
}
{
	echo "Soak of $(date -u +%Y-%m-%d), ${seconds} s, $profile build, \`make soak\` (bench/soak.sh): cached reviews by digest"
	echo "(150/s) and by tag (40/s), reviews naming an image at a registry that never answers (5/s), unmatched images"
	echo "(20/s), and a policy change every minute ($changes in all)."
	echo
	echo "| RSS at start | RSS at end | RSS max |"
	echo "|---:|---:|---:|"
	echo "| $((start_rss / 1024)) MiB | $((end_rss / 1024)) MiB | $((max / 1024)) MiB |"
	echo
	for f in by-digest by-tag hanging unmatched; do echo "- $(summary "$RXG_WORK/$f.out")"; done
	echo
	echo "The RSS curve, one sample every 10 s: \`bench/soak-rss.csv\`."
} >"$results"
cat "$results"
