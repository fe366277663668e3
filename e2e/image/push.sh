#!/usr/bin/env bash
# `make image-push REGISTRY=registry.example.com/team [COSIGN_KEY=cosign.key] [PLAIN_HTTP=1]`: pushes the
# image that `make image` built (target/image/oci) with crane, by digest, and signs that digest with
# cosign, so that registryx-guard can verify its own image. Prints the pinned reference for the chart's
# image.digest. Flags: e2e/image/sign.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PATH=${RXG_TOOLS_DIR:-$root/.tools}/bin:$PATH
: "${REGISTRY:?set REGISTRY, e.g. make image-push REGISTRY=registry.example.com/team}"
# shellcheck source=e2e/image/sign.sh
source "$root/e2e/image/sign.sh"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
layout=${OUT:-$root/target/image}/oci
[[ -d $layout ]] || { echo "no image in $layout: run make image first" >&2; exit 1; }
reference=$REGISTRY/registryx-guard:$version
crane push "${crane_flags[@]}" "$layout" "$reference" >&2
digest=$(crane digest "${crane_flags[@]}" "$reference")
sign_digest "$REGISTRY/registryx-guard@$digest"
echo "$REGISTRY/registryx-guard@$digest"
