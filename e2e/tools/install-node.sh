#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs what e2e/node.sh needs to run a one-node Kubernetes cluster on this machine, offline, into the
# same bin folder as install.sh, "$RXG_TOOLS_DIR/bin" (default: .tools/bin, git-ignored):
#
#   containerd, ctr, containerd-shim-runc-v2, runc   Debian packages (node-versions.env), linked into bin/
#   CNI plugins                                       Debian package, left in $CNI_BIN_DIR (/usr/lib/cni)
#   busybox                                           Debian's busybox-static, linked into bin/ (test images)
#   kubelet, kube-scheduler, kube-controller-manager  built from k8s.io/kubernetes by the kube/ wrapper module
#   pause + images/pause.tar                          Kubernetes' pause.c built static, as an OCI image tarball
#
# Idempotent like install.sh: each product carries a stamp of what made it, and a product whose stamp
# matches is left alone, so a second run takes a second. Needs root (apt, and node.sh runs containerd).
# Prints each step's time, and the bin folder on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tools_dir=${RXG_TOOLS_DIR:-$root/.tools}
bin=$tools_dir/bin
stamps=$tools_dir/stamps
images=$tools_dir/images
mkdir -p "$bin" "$stamps" "$images"
# shellcheck source=node-versions.env
source "$here/node-versions.env"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[tools] %s\n' "$*" >&2; }
total_start=$SECONDS
# shellcheck source=apt.sh
source "$here/apt.sh"

# up_to_date PATH STAMPNAME STAMP: true when PATH exists and was made from STAMP.
up_to_date() {
	[[ -e $1 ]] && [[ -f $stamps/$2 ]] && [[ $(<"$stamps/$2") == "$3" ]]
}

# make_product PATH STAMPNAME STAMP COMMAND...: runs COMMAND unless PATH is up to date, then records STAMP.
make_product() {
	local path=$1 name=$2 stamp=$3
	shift 3
	if up_to_date "$path" "$name" "$stamp"; then
		return
	fi
	log "making $name ($stamp)"
	local start=$SECONDS
	"$@"
	[[ -e $path ]] || { log "FAILED: $path was not produced"; exit 1; }
	printf '%s' "$stamp" >"$stamps/$name"
	log "made $name in $((SECONDS - start))s"
}

# --- Debian packages ---------------------------------------------------------------------------------------
install_debs() {
	# shellcheck disable=SC2086 # NODE_DEBS is a list of package=version words.
	apt_install $NODE_DEBS
	# On a machine with systemd, Debian's containerd.service would still start at the next boot with the
	# system config (/run/containerd): harmless, node.sh's containerd shares nothing with it.
	local tool
	for tool in containerd ctr containerd-shim-runc-v2 runc busybox; do
		ln -sf "$(command -v "$tool")" "$bin/$tool"
	done
	[[ -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/host-local && -x $CNI_BIN_DIR/portmap ]] ||
		{ log "FAILED: no CNI plugins in $CNI_BIN_DIR"; exit 1; }
}
make_product "$bin/containerd" node-debs "$NODE_DEBS" install_debs

# --- kubelet, kube-scheduler, kube-controller-manager -------------------------------------------------------
# The stamp of a wrapper module, exactly as install.sh computes it.
module_hash() { find "$here/$1" -maxdepth 1 -type f \( -name 'go.*' -o -name '*.go' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16; }
kube=$(module_hash kube)

# These commands import modules kube-apiserver does not (cadvisor, the CRI client, ...). With -mod=mod,
# `go build` would add their go.sum lines and indirect requirements to kube/go.mod and go.sum, which changes
# the wrapper's hash and so would make install.sh rebuild kube-apiserver and kubectl. So they are built in a
# copy of the wrapper module under the tools folder: same module path, same pinned k8s.io/kubernetes, same
# build flags, hence the same build-cache entries for every package kube-apiserver already compiled.
node_module=$tools_dir/src/kube-node
prepare_node_module() {
	mkdir -p "$node_module"
	if [[ ! -f $node_module/.from ]] || [[ $(<"$node_module/.from") != "$kube" ]]; then
		cp "$here/kube/go.mod" "$here/kube/go.sum" "$node_module/"
		printf '%s' "$kube" >"$node_module/.from"
	fi
}
node_build() { # node_build OUT PACKAGE
	prepare_node_module
	(cd "$node_module" && go build -trimpath -ldflags=-s -o "$bin/$1" "$2")
}
for cmd in kube-scheduler kube-controller-manager kubelet; do
	make_product "$bin/$cmd" "$cmd" "$kube" node_build "$cmd" "k8s.io/kubernetes/cmd/$cmd"
done

# --- the pause image -----------------------------------------------------------------------------------------
pause_tag=${PAUSE_IMAGE##*:}
kube_src=$(cd "$here/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
pause_c=$kube_src/build/pause/linux/pause.c
build_pause() {
	# -static: the image holds this one file and nothing else (no libc). VERSION is what `pause -v` prints.
	gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag" -o "$bin/pause" "$pause_c"
	strip "$bin/pause"
}
make_product "$bin/pause" pause "$pause_tag-$(sha256sum "$pause_c" | cut -c1-16)" build_pause

# The image: pause at /pause, run as 65535 like the upstream image (which uses USER 65535:65535).
build_pause_image() {
	python3 "$root/e2e/image/oci-image.py" --file "$bin/pause:/pause" --entrypoint /pause \
		--uid 65535 --gid 65535 --tag "$PAUSE_IMAGE" --docker-tar "$images/pause.tar" >/dev/null
}
make_product "$images/pause.tar" pause-image \
	"$PAUSE_IMAGE-$(cat "$bin/pause" "$root/e2e/image/oci-image.py" | sha256sum | cut -c1-16)" build_pause_image

log "node tools ready in $((SECONDS - total_start))s"
echo "$bin"
