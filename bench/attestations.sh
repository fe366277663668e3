#!/usr/bin/env bash
# The cost of a required attestation (BENCHMARKS.md, "Attestations"; bench/attestation-results.md holds
# the figures of the last run, by hand): the same images verified cold with and without a policy that
# requires a provenance attestation, counting registry requests and sequential round trips, and the
# cached review with the requirement (criterion). A few minutes, not the whole `make bench`.
#
#   bash bench/attestations.sh            # prints the cold table, then runs the criterion benches
#   RXG_ATT_IMAGES=20 (default) images per registry; RXG_KEEP_WORK=1 keeps the work folder
#
# Cold: examples/verify_bench.rs (the library's Verifier in-process, a fresh one per batch) over images
# named by digest, with every registry request held 20 ms by its local proxy so that the sequential round
# trips show (it counts them as waves of requests), and without the proxy. Two registries: the
# distribution registry (legacy: cosign's `.sig` and `.att` tags) and go-containerregistry's (bundles
# as OCI referrers). Four cases on each: signed only, checked by a key policy; signed and attested, by the
# same policy (nothing required); signed and attested, by the policy that requires slsaprovenance1;
# signed only, by that policy (refused: attestation_missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../e2e/lib.sh
source "$ROOT/e2e/lib.sh"
trap cleanup EXIT
IMAGES=${RXG_ATT_IMAGES:-20}
RTT_MS=20
cd "$ROOT"
for tool in registry ociregistry crane cosign; do
	command -v "$tool" >/dev/null || { echo "missing $tool: run 'make tools'" >&2; exit 1; }
done

say "Building examples/verify_bench (release)"
cargo build --release --locked --example verify_bench
VERIFY_BENCH=$ROOT/target/release/examples/verify_bench

say "Starting the registries"
start_registry
DIST=$REGISTRY
port=$(free_port)
ociregistry -addr "127.0.0.1:$port" >"$RXG_WORK/ociregistry.log" 2>&1 &
RXG_PIDS+=($!)
OCI=127.0.0.1:$port
wait_for "ociregistry" 20 curl -fsS "http://$OCI/v2/"

# push HOST REPOSITORY TAG: a one-layer image whose digest is unique; prints it by digest.
push() {
	local dir=$RXG_WORK/images/$1/$2/$3
	mkdir -p "$dir/root"
	echo "$1/$2:$3 $RANDOM$RANDOM" >"$dir/root/seed"
	tar -C "$dir/root" -cf "$dir/layer.tar" seed
	crane append --insecure --new_layer "$dir/layer.tar" --new_tag "$1/$2:$3" >/dev/null 2>"$dir/crane.log" ||
		{ cat "$dir/crane.log" >&2; return 1; }
	echo "$1/$2@$(crane digest --insecure "$1/$2:$3")"
}

export COSIGN_PASSWORD=bench DOCKER_CONFIG=$RXG_WORK/home/docker TUF_ROOT=$RXG_WORK/home/tuf
mkdir -p "$RXG_WORK/home"
cosign() { HOME=$RXG_WORK/home command cosign "$@"; }
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
echo '{"runDetails":{"builder":{"id":"https://github.com/acme/.github/workflows/release.yml@refs/heads/main"}}}' \
	>"$RXG_WORK/provenance.json"
run_cosign() {
	cosign "$@" >"$RXG_WORK/cosign.log" 2>&1 || { cat "$RXG_WORK/cosign.log" >&2; return 1; }
}

say "Pushing, signing and attesting $IMAGES images per registry and case"
for format in legacy bundle; do
	host=$DIST bundle=false
	[[ $format == bundle ]] && host=$OCI bundle=true
	for kind in signed attested; do
		for ((i = 1; i <= IMAGES; i++)); do push "$host" "$kind/img" "$i"; done >"$RXG_WORK/$format-$kind.txt"
		mapfile -t images <"$RXG_WORK/$format-$kind.txt"
		run_cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
			--new-bundle-format=$bundle "${images[@]}"
		if [[ $kind == attested ]]; then
			for image in "${images[@]}"; do
				run_cosign attest --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false \
					--use-signing-config=false --new-bundle-format=$bundle --type slsaprovenance1 \
					--predicate "$RXG_WORK/provenance.json" "$image"
			done
		fi
	done
	for policy in plain required; do
		{
			echo "apiVersion: registryx.io/v1alpha1"
			echo "kind: ImageSigningPolicy"
			echo "metadata: {name: att-$policy}"
			echo "spec:"
			echo "  images: [\"$host/**\"]"
			echo "  registry: {insecure: true}"
			echo "  authorities:"
			echo "    - name: release"
			echo "      key:"
			echo "        data: |"
			sed 's/^/          /' "$RXG_WORK/cosign.pub"
			[[ $policy == required ]] && echo "      attestations: [{type: slsaprovenance1}]"
		} >"$RXG_WORK/$format-$policy.yaml"
	done
done

say "Cold verification (examples/verify_bench.rs), with and without $RTT_MS ms per registry request"
: >"$RXG_WORK/cold.jsonl"
for format in legacy bundle; do
	for run in "signed plain" "attested plain" "attested required" "signed required"; do
		read -r kind policy <<<"$run"
		for rtt in 0 "$RTT_MS"; do
			"$VERIFY_BENCH" --label "$format $kind $policy" --policy "$RXG_WORK/$format-$policy.yaml" \
				--images "$RXG_WORK/$format-$kind.txt" --rtt-ms "$rtt" >>"$RXG_WORK/cold.jsonl"
		done
	done
done
python3 - "$RXG_WORK/cold.jsonl" <<-'PY'
	import json, sys
	runs = [json.loads(line) for line in open(sys.argv[1])]
	by = {(r["label"], r["rtt_ms"]): r for r in runs}
	print("| registry, images, policy | admitted | requests per image | round trips | median ms (RTT 0) | median ms (RTT 20 ms) | cached µs/image |")
	print("|---|---:|---:|---:|---:|---:|---:|")
	for label in dict.fromkeys(r["label"] for r in runs):
	    fast, slow = by[(label, 0)], by[(label, max(k[1] for k in by if k[0] == label))]
	    p = slow["per_image"]
	    requests = f"{p['requests_min']}" if p["requests_min"] == p["requests_max"] else f"{p['requests_min']}-{p['requests_max']}"
	    trips = f"{p['round_trips_min']}" if p["round_trips_min"] == p["round_trips_max"] else f"{p['round_trips_min']}-{p['round_trips_max']}"
	    print(f"| {label} | {slow['admitted']}/{slow['images']} | {requests} | {trips} | "
	          f"{fast['per_image']['median_ms']} | {p['median_ms']} | {fast['cached']['us_per_image']} |")
PY

say "Cached review with a required attestation (criterion, benches/admission.rs)"
cargo bench --locked --bench admission -- --warm-up-time 1 --measurement-time 4 "admission/cached review, 3 images by digest"
