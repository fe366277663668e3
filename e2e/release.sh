#!/usr/bin/env bash
# `make release REGISTRY=registry.example.com/team [COSIGN_KEY=cosign.key] [PLAIN_HTTP=1]`: a release
# users can install and trust. The reproducible image (e2e/image/build.sh; BINARY picks the binary,
# default the release build) pushed by digest to $REGISTRY/registryx-guard and signed
# (e2e/image/push.sh); a copy of the chart pinned to that digest (image.repository, image.digest;
# version and appVersion from Cargo.toml) packaged, pushed to oci://$REGISTRY/charts and signed by its
# digest as well. Prints both pinned references and the commands that verify and install them.
#
# Log in to the registry first as each tool reads it: `crane auth login` (or docker login) for crane and
# cosign, `helm registry login` for helm.
#
# Re-running is safe: the image is rebuilt to the same digest and gets one more signature by the same
# key; the chart version is pushed again with the same files (helm stamps the archive and the manifest
# with the time, so that is another digest) and that digest is signed. Work files: OUT (default
# target/dist), the image in OUT/image and the chart in OUT/chart.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=${RXG_TOOLS_DIR:-$root/.tools}/bin:$PATH
: "${REGISTRY:?set REGISTRY, e.g. make release REGISTRY=registry.example.com/team COSIGN_KEY=cosign.key}"
REGISTRY=${REGISTRY%/}
# shellcheck source=e2e/image/sign.sh
source "$root/e2e/image/sign.sh"
for t in crane cosign helm; do
	command -v "$t" > /dev/null || { echo "make release needs $t: on PATH, or make tools" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
out=${OUT:-$root/target/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# 1. The image, by digest, signed.
OUT=$out/image IMAGE=$REGISTRY/registryx-guard:$version bash "$root/e2e/image/build.sh" >&2
image=$(OUT=$out/image REGISTRY=$REGISTRY bash "$root/e2e/image/push.sh")

# 2. The chart, pinned to that digest: users get the image that was signed whatever the tag says.
chart=$out/chart/registryx-guard
rm -rf "$out/chart"
mkdir -p "$out/chart"
cp -R "$root/charts/registryx-guard" "$chart"
values=$chart/values.yaml
sed -i \
	-e "0,/^  repository: .*/s||  repository: $REGISTRY/registryx-guard|" \
	-e "0,/^  digest: .*/s||  digest: \"${image#*@}\"|" \
	"$values"
sed -i -e "s/^version: .*/version: $version/" -e "s/^appVersion: .*/appVersion: \"$version\"/" "$chart/Chart.yaml"
# The edits above match lines, not YAML: check that they landed where the chart reads them.
grep -q "^  repository: $REGISTRY/registryx-guard\$" "$values" && grep -q "^  digest: \"${image#*@}\"\$" "$values" || {
	echo "could not pin the image in $values: did its image: block change?" >&2
	exit 1
}
helm lint "$chart" >&2
helm package "$chart" --destination "$out/chart" >&2
helm_flags=()
[[ ${PLAIN_HTTP:-} == 1 ]] && helm_flags=(--plain-http)
helm push "${helm_flags[@]}" "$out/chart/registryx-guard-$version.tgz" "oci://$REGISTRY/charts" >&2

# 3. The chart artifact, by digest, signed.
chart_digest=$(crane digest "${crane_flags[@]}" "$REGISTRY/charts/registryx-guard:$version")
chart_ref=$REGISTRY/charts/registryx-guard@$chart_digest
sign_digest "$chart_ref"

# cosign verify needs --allow-http-registry for a plain-HTTP registry, and --insecure-ignore-tlog=true
# for signatures made without a transparency-log entry (COSIGN_SIGN_FLAGS=--tlog-upload=false).
verify_flags=${cosign_flags[*]}
[[ ${COSIGN_SIGN_FLAGS:-} == *--tlog-upload=false* ]] && verify_flags+=" --insecure-ignore-tlog=true"
cat <<TEXT
image: $image
chart: $chart_ref (oci://$REGISTRY/charts/registryx-guard, version $version)

Verify both with the release's public key, then install the chart (which pins the image digest above):
  cosign verify --key cosign.pub${verify_flags:+ $verify_flags} $image
  cosign verify --key cosign.pub${verify_flags:+ $verify_flags} $chart_ref
  helm install registryx-guard oci://$REGISTRY/charts/registryx-guard --version $version${helm_flags:+ ${helm_flags[*]}} \\
    --namespace registryx-guard --create-namespace \\
    --set selfPolicy.enabled=true --set-file selfPolicy.publicKey=cosign.pub
TEXT
