#!/usr/bin/env bash
# `make image`: the registryx-guard image, without a Docker engine. The binary (BINARY, default: the
# release build) with the shared libraries it links (from this machine's Debian packages, as distroless
# images take them) and Debian's CA certificates, as one reproducible layer: numeric user 65532, no
# shell, fixed mtimes. Writes an OCI layout (target/image/oci) and a `docker save`-compatible tarball
# (target/image/registryx-guard.tar); prints the manifest digest. Two builds of one binary give one
# digest.
#
#   e2e/image/build.sh                     # cargo build --release, then the image
#   BINARY=target/debug/registryx-guard e2e/image/build.sh
#   IMAGE=registry.example.com/team/registryx-guard:0.1.0 e2e/image/build.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
image=${IMAGE:-ghcr.io/registryx/registryx-guard:$version}
out=${OUT:-$root/target/image}
if [[ -z ${BINARY:-} ]]; then
	(cd "$root" && cargo build --release --locked --quiet --bin registryx-guard)
	# Where cargo put it: CARGO_TARGET_DIR (relative to the root, where cargo ran) or target/.
	target=${CARGO_TARGET_DIR:-target}
	[[ $target == /* ]] || target=$root/$target
	BINARY=$target/release/registryx-guard
fi
rm -rf "$out/oci"
mkdir -p "$out"
# Debug information is not shipped (strip is deterministic: the digest stays reproducible).
strip --strip-debug -o "$out/registryx-guard" "$BINARY"
python3 "$root/e2e/image/oci-image.py" \
	--file "$out/registryx-guard:/registryx-guard" --ldd \
	--file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
	--entrypoint /registryx-guard --uid 65532 --gid 65532 \
	--tag "$image" --oci-dir "$out/oci" --docker-tar "$out/registryx-guard.tar"
