# Sourced by e2e/image/push.sh and e2e/release.sh: how crane and cosign reach REGISTRY, and signing one
# pushed digest, said once so that the image and the chart are pushed and signed alike.
#   PLAIN_HTTP=1        the registry speaks plain HTTP (a local or test registry)
#   COSIGN_KEY          the private key (default cosign.key; cosign asks for its password, or reads
#                       COSIGN_PASSWORD)
#   COSIGN_SIGN_FLAGS   further `cosign sign` flags, e.g. `--tlog-upload=false` where no Rekor is
#                       reachable (the signature then carries no transparency-log entry)
crane_flags=()
cosign_flags=()
if [[ ${PLAIN_HTTP:-} == 1 ]]; then
	crane_flags=(--insecure)
	cosign_flags=(--allow-http-registry)
fi
cosign_key=${COSIGN_KEY:-cosign.key}
[[ -f $cosign_key ]] || {
	echo "no cosign key $cosign_key: set COSIGN_KEY, or run cosign generate-key-pair" >&2
	exit 1
}

# sign_digest REFERENCE@sha256:...: one more signature by COSIGN_KEY on exactly that digest (a tag could
# move between the push and the signature).
sign_digest() {
	[[ $1 == *@sha256:* ]] || { echo "sign_digest: $1 is not pinned by digest" >&2; return 1; }
	# shellcheck disable=SC2086 # COSIGN_SIGN_FLAGS is a list of flags
	cosign sign --yes --key "$cosign_key" "${cosign_flags[@]}" ${COSIGN_SIGN_FLAGS:-} "$1" >&2
}
