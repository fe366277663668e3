# Sourced by e2e/tools/install.sh and install-node.sh, which define `log`.

# apt_install PACKAGE...: Debian packages, with their services kept from starting (policy-rc.d): the tests
# and node.sh start their own registries, Prometheus servers and containerd, with their own configs,
# ports and folders.
apt_install() {
	log "apt-get install $*"
	local sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	local policy=/usr/sbin/policy-rc.d created=""
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
		$sudo chmod +x "$policy"
		created=1
	fi
	# Without an update first: a machine whose package lists already know the pinned versions installs
	# them in seconds, and only one whose lists are stale (or absent) pays for the update.
	if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
	fi
	[[ -z $created ]] || $sudo rm -f "$policy"
}
