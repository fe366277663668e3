#!/usr/bin/env bash
# Builds the peer verifiers that bench/run.sh times next to `cosign verify`, into the same bin folder as
# e2e/tools/install.sh, "$RXG_TOOLS_DIR/bin" (default: .tools/bin in the repository, git-ignored).
# Idempotent the same way: each binary carries a stamp of the pinned version that built it, in
# "$RXG_TOOLS_DIR/stamps/<name>", and a binary whose stamp matches is not rebuilt, so a second run takes
# seconds and builds nothing.
#
#   policy-tester  sigstore policy-controller's CLI (cmd/tester), module github.com/sigstore/policy-controller
#   kyverno        the Kyverno CLI (cmd/cli/kubectl-kyverno), module github.com/kyverno/kyverno
#
# `go install MODULE/cmd/...@VERSION` refuses both (their go.mod has replace directives), so each module is
# fetched with `go mod download`, copied out of the read-only module cache into
# "$RXG_TOOLS_DIR/build/<name>" and built there with `go build` (GOFLAGS=-mod=mod: go.sum may need
# entries). The copy is removed after a successful build; a failed build keeps it and its log,
# "$RXG_TOOLS_DIR/build/<name>.log".
#
# Usage: bench/peers.sh [build] [NAME...]   (default: build every peer)
#   Prints one line per peer on stdout, and always exits 0, so the caller can skip a peer that failed:
#     ok <name> <path of the binary>
#     skip <name> <reason>
#   Progress and build logs go to stderr. RXG_PEERS_STRICT=1 makes it exit 1 when any peer was skipped.
# Usage: bench/peers.sh list    the peers and their pinned module versions, one per line
# Usage: bench/peers.sh tools   the benches' own tools (not `make test`'s), the same pinned, stamped way:
#   vegeta, the HTTP load generator of bench/load.py
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
tools_dir=${RXG_TOOLS_DIR:-$root/.tools}
bin=$tools_dir/bin
stamps=$tools_dir/stamps
builds=$tools_dir/build
mkdir -p "$bin" "$stamps" "$builds"

# The peers, pinned: NAME MODULE VERSION PACKAGE VERSION_VARIABLE (the variable their own Makefiles set to
# the version with -X, so that `policy-tester --version` and `kyverno version` print it).
VEGETA_MODULE=github.com/tsenart/vegeta/v12
VEGETA_VERSION=v12.13.0
PEERS=(
	"policy-tester github.com/sigstore/policy-controller v0.13.1 ./cmd/tester sigs.k8s.io/release-utils/version.gitVersion"
	"kyverno github.com/kyverno/kyverno v1.19.1 ./cmd/cli/kubectl-kyverno github.com/kyverno/kyverno/pkg/version.BuildVersion"
)

# -buildvcs=false: the build folder sits inside this repository, whose commit would be stamped otherwise.
export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

log() { printf '[peers] %s\n' "$*" >&2; }

# shellcheck source=../e2e/tools/stamped-build.sh
source "$root/e2e/tools/stamped-build.sh"

# module_build NAME MODULE VERSION PACKAGE VERSION_VARIABLE: go build PACKAGE inside a writable copy of
# MODULE@VERSION into bin/NAME. Everything it prints goes to build/NAME.log (and stderr).
module_build() {
	local name=$1 module=$2 version=$3 package=$4 variable=$5
	local work=$builds/$name log=$builds/$name.log json dir
	# Explicit `|| exit 1`s: `set -e` is off in here, since the caller tests this function's status.
	(
		json=$(go mod download -json "$module@$version") || { printf '%s\n' "$json"; exit 1; }
		dir=$(sed -n 's/^\t"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
		[[ -n $dir && -d $dir ]] || { echo "go mod download $module@$version: no module directory"; exit 1; }
		if [[ -d $work ]]; then chmod -R u+w "$work" && rm -rf "$work" || exit 1; fi
		mkdir -p "$work" && cp -R "$dir/." "$work/" && chmod -R u+w "$work" && cd "$work" || exit 1
		go build -trimpath -ldflags="-s -X=$variable=$version" -o "$bin/$name.new" "$package" || exit 1
		mv -f "$bin/$name.new" "$bin/$name" || exit 1
		cd / && rm -rf "$work"
	) 2>&1 | tee "$log" >&2
}

# reason NAME: one line saying why NAME failed, from its build log.
reason() {
	local log=$builds/$1.log line=""
	[[ -f $log ]] && line=$(grep -v -e '^#' -e '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-300)
	printf '%s (log: %s)' "${line:-build failed}" "$log"
}

case ${1:-build} in
tools)
	build vegeta "$VEGETA_VERSION" env GOBIN="$bin" go install "$VEGETA_MODULE@$VEGETA_VERSION"
	exit 0
	;;
list)
	for peer in "${PEERS[@]}"; do
		read -r name module version _ <<<"$peer"
		echo "$name $module@$version"
	done
	exit 0
	;;
build) [[ $# -eq 0 ]] || shift ;;
-h | --help)
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 0
	;;
*) ;; # bare peer names: `bench/peers.sh kyverno`
esac

wanted=("$@")
skipped=0
declare -A known=()
for peer in "${PEERS[@]}"; do
	read -r name module version package variable <<<"$peer"
	known[$name]=1
	if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
	if ! command -v go >/dev/null; then
		echo "skip $name go is not installed (needed to build $module@$version)"
		skipped=1
		continue
	fi
	if build "$name" "$version" module_build "$name" "$module" "$version" "$package" "$variable"; then
		echo "ok $name $bin/$name"
	else
		echo "skip $name $module@$version did not build: $(reason "$name")"
		skipped=1
	fi
done
for name in "${wanted[@]}"; do
	[[ -n ${known[$name]:-} ]] || { echo "skip $name unknown peer (known: ${!known[*]})"; skipped=1; }
done
[[ ${RXG_PEERS_STRICT:-0} != 1 ]] || exit "$skipped"
