#!/usr/bin/env bash
# Installs the test toolchain into one bin folder, "$RXG_TOOLS_DIR/bin" (default: .tools/bin in the
# repository, git-ignored). Idempotent: each tool carries a stamp of what built it (its pinned version, or
# the hash of its wrapper module), and a tool whose stamp matches is not rebuilt, so a second run takes
# seconds. Prints the bin folder on its last line.
#
#   cosign         go install, pinned in versions.env
#   helm           go install, pinned in versions.env
#   kube-apiserver, kubectl   built from k8s.io/kubernetes by the wrapper module kube/
#   etcd           built from go.etcd.io/etcd/server/v3 by the wrapper module etcd/
#   registry       Debian's docker-registry (the CNCF distribution registry), linked into bin/
#   prometheus, promtool      Debian's prometheus, pinned in versions.env, linked into bin/
#   ociregistry, crane        go-containerregistry (OCI 1.1 referrers API), wrapper module ociregistry/
#   containerd, runc, CNI, kubelet, kube-scheduler, kube-controller-manager, pause: install-node.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tools_dir=${RXG_TOOLS_DIR:-$root/.tools}
bin=$tools_dir/bin
stamps=$tools_dir/stamps
mkdir -p "$bin" "$stamps"
# shellcheck source=versions.env
source "$here/versions.env"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[tools] %s\n' "$*" >&2; }

# shellcheck source=stamped-build.sh
source "$here/stamped-build.sh"
# shellcheck source=apt.sh
source "$here/apt.sh"

# The stamp of a wrapper module: the hash of its go.mod, go.sum and Go sources.
module_hash() { find "$here/$1" -maxdepth 1 -type f \( -name 'go.*' -o -name '*.go' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16; }

go_install() { GOBIN=$bin go install "$1@$2"; }
wrapper_build() { # wrapper_build DIR OUT PACKAGE
	(cd "$here/$1" && go build -trimpath -ldflags=-s -o "$bin/$2" "$3")
}

build cosign "$COSIGN_VERSION" go_install "$COSIGN_MODULE" "$COSIGN_VERSION"
build helm "$HELM_VERSION" go_install "$HELM_MODULE" "$HELM_VERSION"

kube=$(module_hash kube)
build kube-apiserver "$kube" wrapper_build kube kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl "$kube" wrapper_build kube kubectl k8s.io/kubernetes/cmd/kubectl

build etcd "$(module_hash etcd)" wrapper_build etcd etcd go.etcd.io/etcd/server/v3

oci=$(module_hash ociregistry)
build ociregistry "$oci" wrapper_build ociregistry ociregistry .
build crane "$oci" wrapper_build ociregistry crane github.com/google/go-containerregistry/cmd/crane

install_docker_registry() {
	command -v docker-registry >/dev/null || apt_install "$DOCKER_REGISTRY_DEB"
	ln -sf "$(command -v docker-registry)" "$bin/registry"
}

# prometheus and promtool, from one package: the alert rules' tests (make alerts-check) and the scrape test.
install_prometheus() {
	# The status too: a package removed but not purged still has its version.
	if [[ $(dpkg-query -W -f='${db:Status-Status} ${Version}' prometheus 2>/dev/null) != "installed ${PROMETHEUS_DEB#*=}" ]]; then
		apt_install "$PROMETHEUS_DEB"
	fi
	# policy-rc.d kept the service from starting now; on a machine that runs systemd it would still
	# start at the next boot, on the tests' default port 9090 and with Debian's config: disable it.
	if [[ -d /run/systemd/system ]]; then
		local sudo=""
		[[ $(id -u) == 0 ]] || sudo=sudo
		$sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	fi
	ln -sf /usr/bin/prometheus "$bin/prometheus"
	ln -sf /usr/bin/promtool "$bin/promtool"
}

build registry "$DOCKER_REGISTRY_DEB" install_docker_registry
build prometheus "$PROMETHEUS_DEB" install_prometheus
build promtool "$PROMETHEUS_DEB" install_prometheus

# The node that runs pods (tests/cluster/cluster.rs, the demo): containerd, runc, CNI plugins, kubelet,
# kube-scheduler, kube-controller-manager and the pause image.
bash "$here/install-node.sh" >&2

echo "$bin"
