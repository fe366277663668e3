#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# One Kubernetes node on this machine, joined to an API server that is already running (e2e/lib.sh's
# start_control_plane, tests/support/cluster.rs): containerd + runc + CNI bridge, kubelet, and the two
# controllers a Deployment needs (kube-controller-manager, kube-scheduler). Offline: the only image it
# needs, pause, is built by e2e/tools/install-node.sh and imported; test images are imported the same way
# (node_load_image). Every process runs in the background with its log, config and state under WORKDIR.
# Needs root and the tools of e2e/tools/install-node.sh.
#
# Sourced, it defines functions and sets no options:
#   start_node WORKDIR KUBECONFIG APISERVER_URL   starts everything, returns when the node is Ready
#   node_load_image TAR                           imports an image archive (e2e/image/oci-image.py) into it
#   stop_node [WORKDIR]                           stops everything, unmounts, removes bridge, DNAT rule, cgroups
# Run, the same with a verb:  node.sh start WORKDIR KUBECONFIG URL | load WORKDIR TAR | stop WORKDIR
# (start writes the pids to WORKDIR/run, so a later `stop` from another process finds them).
#
# Knobs (environment): RXG_NODE_NAME (default: hostname), RXG_NODE_IP (default: the source address of the
# default route), RXG_POD_SUBNET (10.88.0.0/16), RXG_NODE_BRIDGE (rxg0), RXG_KUBELET_OPEN=1 (kubelet API
# without authentication, so that `kubectl logs/exec` work with an API server that has no kubelet client
# certificate: test machines only).
#
# Pods reach the API server at the `kubernetes` Service IP (10.96.0.1:443, which kubelet puts in every
# container's KUBERNETES_SERVICE_HOST/PORT) without kube-proxy: one iptables DNAT rule sends it from the
# pod bridge to APISERVER_URL's address, which may be loopback (route_localnet on the bridge allows that).

RXG_ROOT=${RXG_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
RXG_TOOLS_DIR=${RXG_TOOLS_DIR:-$RXG_ROOT/.tools}
PATH=$RXG_TOOLS_DIR/bin:$PATH
# shellcheck source=tools/node-versions.env
source "$RXG_ROOT/e2e/tools/node-versions.env"

_node_log() { printf '[node] %s\n' "$*" >&2; }

_node_free_port() { python3 "$RXG_ROOT/e2e/free_port.py"; }

# _node_wait WHAT SECONDS COMMAND...: retries COMMAND until it succeeds.
_node_wait() {
	local what=$1 seconds=$2
	shift 2
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS > deadline)); then
			_node_log "timed out waiting for $what; logs in $NODE_WORK/logs"
			return 1
		fi
		sleep 0.2
	done
}

# _node_spawn NAME COMMAND...: runs COMMAND in the background, logging to logs/NAME.log, pid in run/NAME.pid.
_node_spawn() {
	local name=$1
	shift
	"$@" </dev/null >"$NODE_WORK/logs/$name.log" 2>&1 &
	echo $! >"$NODE_WORK/run/$name.pid"
	_node_log "$name started (pid $!)"
}

_node_alive() { [[ -f $NODE_WORK/run/$1.pid ]] && kill -0 "$(<"$NODE_WORK/run/$1.pid")" 2>/dev/null; }

_node_ctr() { ctr --address "$NODE_WORK/containerd/containerd.sock" --namespace k8s.io "$@"; }

_node_kubectl() { kubectl --kubeconfig "$NODE_KUBECONFIG" --request-timeout 10s "$@"; }

# The cgroup v1 hierarchies (one folder each under /sys/fs/cgroup), plus the cgroup v2 one of a hybrid
# host (libcontainer also uses it there).
_node_cgroup_dirs() {
	local dir
	for dir in /sys/fs/cgroup/*/; do
		[[ -f $dir/cgroup.procs ]] && printf '%s\n' "${dir%/}"
	done
}

# _node_ready SINCE: the node is Ready by a heartbeat of this kubelet (at or after SINCE, RFC 3339 UTC), not
# by a status left over from an earlier run under the same node name.
_node_ready() {
	local status
	status=$(_node_kubectl get node "$NODE_NAME" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')
	[[ ${status% *} == True && ! ${status#* } < $1 ]]
}

start_node() {
	local work=$1 kubeconfig=$2 url=$3
	[[ -n $work && -n $kubeconfig && -n $url ]] || { _node_log "usage: start_node WORKDIR KUBECONFIG APISERVER_URL"; return 2; }
	[[ -f $RXG_TOOLS_DIR/images/pause.tar && -x $RXG_TOOLS_DIR/bin/kubelet ]] ||
		{ _node_log "missing tools: run e2e/tools/install-node.sh"; return 1; }
	mkdir -p "$work"
	NODE_WORK=$(cd "$work" && pwd) NODE_KUBECONFIG=$(realpath "$kubeconfig")
	NODE_NAME=${RXG_NODE_NAME:-$(hostname)}
	NODE_IP=${RXG_NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}
	NODE_POD_SUBNET=${RXG_POD_SUBNET:-10.88.0.0/16}
	NODE_BRIDGE=${RXG_NODE_BRIDGE:-rxg0}
	# Pod cgroups live under their own root, so that stop_node can find (and kill) every process of
	# this node's pods, and remove the cgroups, without touching anything else on the machine.
	NODE_CGROUP_ROOT=/rxg-$NODE_NAME
	[[ -n $NODE_IP ]] || { _node_log "no node IP: set RXG_NODE_IP"; return 1; }
	local w=$NODE_WORK start=$SECONDS since
	since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	mkdir -p "$w"/{logs,run,containerd/certs.d,cni/net.d,cni/ipam,kubelet,pod-logs,controllers}
	# Written first, so that stop_node can clean up after a start_node that failed half-way.
	cat >"$w/node.env" <<-ENV
		NODE_NAME=$NODE_NAME
		NODE_IP=$NODE_IP
		NODE_BRIDGE=$NODE_BRIDGE
		NODE_POD_SUBNET=$NODE_POD_SUBNET
		NODE_CGROUP_ROOT=$NODE_CGROUP_ROOT
		NODE_CONTAINERD_ADDRESS=$w/containerd/containerd.sock
		NODE_APISERVER=$url
	ENV

	# --- network: the pod bridge, and the API server at the kubernetes Service IP ------------------------
	# The bridge is made here (the CNI bridge plugin reuses it) so that route_localnet can be set before
	# the first pod: it lets packets DNAT'ed to 127.0.0.1 be routed from and back to the bridge.
	ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
	ip link set "$NODE_BRIDGE" up
	sysctl -qw "net.ipv4.conf.$NODE_BRIDGE.route_localnet=1"
	local hostport=${url#https://} service_ip service_port
	hostport=${hostport%%/*}
	# DNAT needs an address: resolve a host name (localhost, say).
	local host=${hostport%:*}
	[[ $host =~ ^[0-9.]+$ ]] || host=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')
	hostport=$host:${hostport##*:}
	# The API server creates its own Service a moment after it answers: wait for it (up to 30 s).
	local tries=0
	until _node_kubectl get service kubernetes -n default >/dev/null 2>&1; do
		((++tries > 120)) && { echo "the kubernetes Service never appeared" >&2; return 1; }
		sleep 0.25
	done
	service_ip=$(_node_kubectl get service kubernetes -n default -o 'jsonpath={.spec.clusterIP}') || return 1
	service_port=$(_node_kubectl get service kubernetes -n default -o 'jsonpath={.spec.ports[0].port}') || return 1
	local dnat=(PREROUTING -i "$NODE_BRIDGE" -d "$service_ip/32" -p tcp --dport "$service_port"
		-m comment --comment "rxg-node $w" -j DNAT --to-destination "$hostport")
	iptables -t nat -C "${dnat[@]}" 2>/dev/null || iptables -t nat -A "${dnat[@]}"
	printf '%s\n' "${dnat[@]}" >"$w/run/dnat"

	# CNI: bridge + host-local (addresses kept under WORKDIR) + portmap (hostPort). No ipMasq: nothing
	# outside the machine is reachable anyway, and it would leave NAT chains behind after a kill.
	cat >"$w/cni/net.d/10-rxg.conflist" <<-JSON
		{
		  "cniVersion": "1.0.0",
		  "name": "rxg",
		  "plugins": [
		    {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_SUBNET"}]],
		              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$w/cni/ipam"}},
		    {"type": "portmap", "capabilities": {"portMappings": true}}
		  ]
		}
	JSON

	# --- containerd ------------------------------------------------------------------------------------
	# Its own root, state, socket, runc root and opt dir under WORKDIR: it shares nothing with a system
	# containerd. cgroupfs (no systemd here). restrict_oom_score_adj: this VM lacks CAP_SYS_RESOURCE, and
	# without it runc fails every sandbox ("can't get final child's PID from pipe: EOF") trying to lower
	# the pause container's oom_score_adj. netns_mounts_under_state_dir: pod network namespaces are
	# mounted under WORKDIR (not /var/run/netns), so stop_node can find and unmount exactly ours.
	cat >"$w/containerd/config.toml" <<-TOML
		version = 2
		root = "$w/containerd/root"
		state = "$w/containerd/state"
		disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
		[grpc]
		  address = "$w/containerd/containerd.sock"
		[ttrpc]
		  address = "$w/containerd/containerd.sock.ttrpc"
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$w/containerd/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "$PAUSE_IMAGE"
		  restrict_oom_score_adj = true
		  netns_mounts_under_state_dir = true
		  disable_apparmor = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		        Root = "$w/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "$CNI_BIN_DIR"
		    conf_dir = "$w/cni/net.d"
		    max_conf_num = 1
		  [plugins."io.containerd.grpc.v1.cri".registry]
		    # hosts.toml files per registry may be added here (e.g. certs.d/REGISTRY/hosts.toml); a registry
		    # on localhost/127.0.0.1 is pulled from over plain HTTP without one.
		    config_path = "$w/containerd/certs.d"
	TOML
	_node_spawn containerd containerd --config "$w/containerd/config.toml"
	_node_wait containerd 30 _node_ctr version || return 1
	_node_ctr images import --all-platforms "$RXG_TOOLS_DIR/images/pause.tar" >/dev/null || return 1

	# --- controllers -------------------------------------------------------------------------------------
	# The API server's CA (what pods get as ca.crt in kube-root-ca.crt): the chain it serves. A self-signed
	# kube-apiserver serves its certificate and the CA that signed it, whose SANs include the Service IP.
	local ca=$w/controllers/apiserver-ca.crt
	openssl s_client -connect "$hostport" -showcerts </dev/null 2>/dev/null |
		sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' >"$ca"
	[[ -s $ca ]] || { _node_log "could not read the API server's certificate from $hostport"; return 1; }
	# No leader election (one of each), secure ports on free loopback ports (no clash with another node or
	# cluster). The admin kubeconfig also serves for the delegated authentication/authorization of their
	# /healthz endpoints. kube-controller-manager runs every default controller: serviceaccount (the default
	# ServiceAccount pods need), deployment/replicaset, endpoints/endpointslice (which the API server's
	# --enable-aggregator-routing resolves webhook Services with), namespace, garbage collector,
	# root-ca-cert-publisher, node lifecycle.
	NODE_KCM_PORT=$(_node_free_port) NODE_SCHEDULER_PORT=$(_node_free_port)
	_node_spawn kube-controller-manager kube-controller-manager --kubeconfig "$NODE_KUBECONFIG" \
		--authentication-kubeconfig "$NODE_KUBECONFIG" --authorization-kubeconfig "$NODE_KUBECONFIG" \
		--bind-address 127.0.0.1 --secure-port "$NODE_KCM_PORT" --cert-dir "$w/controllers/kcm-certs" \
		--leader-elect=false --root-ca-file "$ca" --use-service-account-credentials=false -v 1
	_node_spawn kube-scheduler kube-scheduler --kubeconfig "$NODE_KUBECONFIG" \
		--authentication-kubeconfig "$NODE_KUBECONFIG" --authorization-kubeconfig "$NODE_KUBECONFIG" \
		--bind-address 127.0.0.1 --secure-port "$NODE_SCHEDULER_PORT" --cert-dir "$w/controllers/scheduler-certs" \
		--leader-elect=false -v 1

	# --- kubelet -----------------------------------------------------------------------------------------
	local cg
	while read -r cg; do
		mkdir -p "$cg$NODE_CGROUP_ROOT"
		# A new cpuset v1 cgroup has no CPUs and no memory nodes: no process could join it.
		if [[ -f $cg/cpuset.cpus && -z $(<"$cg$NODE_CGROUP_ROOT/cpuset.cpus") ]]; then
			cat "$cg/cpuset.cpus" >"$cg$NODE_CGROUP_ROOT/cpuset.cpus"
			cat "$cg/cpuset.mems" >"$cg$NODE_CGROUP_ROOT/cpuset.mems"
		fi
	done < <(_node_cgroup_dirs)
	NODE_KUBELET_PORT=$(_node_free_port) NODE_KUBELET_HEALTHZ_PORT=$(_node_free_port)
	local authn='{anonymous: {enabled: false}, webhook: {enabled: true}}' authz='{mode: Webhook}'
	if [[ -n ${RXG_KUBELET_OPEN:-} ]]; then
		authn='{anonymous: {enabled: true}, webhook: {enabled: false}}' authz='{mode: AlwaysAllow}'
	fi
	# On this cgroup v1 host: failCgroupV1 false (1.35 refuses v1 otherwise), cgroupfs like containerd, no
	# swap check, no node-allocatable enforcement and no local-storage isolation (they need cgroup and
	# filesystem features a VM may lack, and a test node needs neither). Image GC and disk eviction are
	# effectively off: images are imported, never pulled back, so they must not be collected.
	cat >"$w/kubelet/config.yaml" <<-YAML
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		# Mounted Secrets follow their object within seconds (the default is about a minute): a rotated
		# certificate reaches the webhook pods while a test waits.
		syncFrequency: 5s
		configMapAndSecretChangeDetectionStrategy: Watch
		failCgroupV1: false
		cgroupDriver: cgroupfs
		cgroupRoot: $NODE_CGROUP_ROOT
		failSwapOn: false
		enforceNodeAllocatable: []
		localStorageCapacityIsolation: false
		containerRuntimeEndpoint: unix://$w/containerd/containerd.sock
		address: 0.0.0.0
		port: $NODE_KUBELET_PORT
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		healthzPort: $NODE_KUBELET_HEALTHZ_PORT
		authentication: $authn
		authorization: $authz
		podLogsDir: $w/pod-logs
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
		serializeImagePulls: false
		rotateCertificates: false
		registerNode: true
		resolvConf: /etc/resolv.conf
	YAML
	# Authenticates to the API server with the admin kubeconfig (system:masters, so the Node authorizer and
	# NodeRestriction do not apply); --node-ip: the host's address, which pods can reach.
	_node_spawn kubelet kubelet --config "$w/kubelet/config.yaml" --kubeconfig "$NODE_KUBECONFIG" \
		--root-dir "$w/kubelet" --cert-dir "$w/kubelet/pki" --hostname-override "$NODE_NAME" \
		--node-ip "$NODE_IP" -v 1

	cat >>"$w/node.env" <<-ENV
		NODE_KUBELET_PORT=$NODE_KUBELET_PORT
		NODE_APISERVER_FROM_PODS=https://$service_ip:$service_port
	ENV
	_node_wait "node $NODE_NAME to be Ready" 120 _node_ready "$since" || return 1
	_node_log "node $NODE_NAME Ready in $((SECONDS - start))s (work dir $w)"
}

# node_load_image TAR: imports an image archive (OCI layout or docker save, e.g. from oci-image.py) into
# the node's containerd, where the kubelet finds it: pods must use imagePullPolicy IfNotPresent or Never
# (a :latest tag defaults to Always, which would try to pull).
node_load_image() {
	_node_ctr images import --all-platforms "$1"
}

# _node_stop NAME...: SIGTERM to all of them at once (each takes a second or two to shut down gracefully),
# SIGKILL to those still there 3 s later.
_node_stop() {
	local name pids=() pid
	for name in "$@"; do
		[[ -f $NODE_WORK/run/$name.pid ]] || continue
		pid=$(<"$NODE_WORK/run/$name.pid")
		kill "$pid" 2>/dev/null && pids+=("$pid")
		rm -f "$NODE_WORK/run/$name.pid"
	done
	local alive
	for _ in {1..30}; do
		alive=()
		for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
		((${#alive[@]})) || return 0
		sleep 0.1
	done
	kill -9 "${alive[@]}" 2>/dev/null
	return 0
}

# A subshell without errexit: stop_node must run to its end whatever fails on the way (a process already
# gone, a mount already unmounted), also when the caller runs under `set -e`; and node.env, which it
# reads, stays out of the caller's variables.
stop_node() (
	set +e
	NODE_WORK=${1:-${NODE_WORK:-}}
	[[ -n $NODE_WORK && -d $NODE_WORK ]] || { _node_log "usage: stop_node WORKDIR"; return 2; }
	NODE_WORK=$(cd "$NODE_WORK" && pwd)
	local w=$NODE_WORK
	if [[ -f $w/node.env ]]; then
		# shellcheck disable=SC1091
		source "$w/node.env"
	fi
	# The kubelet and the controllers first, so that nothing restarts what is being stopped.
	_node_stop kubelet kube-scheduler kube-controller-manager
	# Every pod's processes: all of them are in the pod cgroups under this node's cgroup root (the
	# containerd shims are not: they die when their container's task is gone, or below).
	local cg pid
	if [[ -n ${NODE_CGROUP_ROOT:-} ]]; then
		for _ in 1 2 3; do
			while read -r cg; do
				[[ -d $cg$NODE_CGROUP_ROOT ]] || continue
				find "$cg$NODE_CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null
			done < <(_node_cgroup_dirs) | sort -u | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
			sleep 0.2
		done
	fi
	# Let containerd reap the tasks (this also ends their shims), then stop it.
	if _node_alive containerd; then
		local id
		for id in $(_node_ctr tasks ls -q 2>/dev/null); do
			_node_ctr tasks delete --force "$id" >/dev/null 2>&1
		done
	fi
	_node_stop containerd
	# Shims left over (containerd killed before their task was deleted): each names our socket.
	grep -lsF -- "$w/containerd/containerd.sock" /proc/[0-9]*/cmdline | cut -d/ -f3 | while read -r pid; do
		[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */containerd-shim-runc-v2 ]] && kill -9 "$pid" 2>/dev/null
	done
	# Everything mounted under WORKDIR, deepest first: container root filesystems (overlay), sandbox
	# /dev/shm, pod network namespaces (nsfs; unmounting the last reference deletes the pod's veth), the
	# kubelet's tmpfs volumes (secrets, service-account tokens). WORKDIR can then be removed with rm -rf.
	local mnt
	while read -r mnt; do
		umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || _node_log "could not unmount $mnt"
	done < <(awk -v w="$w/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | uniq)
	if [[ -f $w/run/dnat ]]; then
		local rule=()
		mapfile -t rule <"$w/run/dnat"
		iptables -t nat -D "${rule[@]}" 2>/dev/null
		rm -f "$w/run/dnat"
	fi
	[[ -z ${NODE_BRIDGE:-} ]] || ip link del "$NODE_BRIDGE" 2>/dev/null
	# The chains the kubelet adds to the host's iptables (IPv4 and IPv6): its canaries, the mangle hint,
	# and KUBE-FIREWALL, which drops connections to 127.0.0.0/8 from outside (DNAT'ed ones excepted).
	local cmd table
	for cmd in iptables ip6tables; do
		command -v "$cmd" >/dev/null || continue
		while $cmd -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
		while $cmd -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
		$cmd -t filter -F KUBE-FIREWALL 2>/dev/null && $cmd -t filter -X KUBE-FIREWALL 2>/dev/null
		for table in filter nat mangle; do
			$cmd -t "$table" -F KUBE-KUBELET-CANARY 2>/dev/null && $cmd -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null
		done
		$cmd -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null
	done
	# The pod cgroups, leaves first (a cgroup v1 folder is removed with rmdir once it has no process).
	if [[ -n ${NODE_CGROUP_ROOT:-} ]]; then
		while read -r cg; do
			[[ -d $cg$NODE_CGROUP_ROOT ]] && find "$cg$NODE_CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null
		done < <(_node_cgroup_dirs)
	fi
	_node_log "node stopped (work dir $w kept)"
	return 0
)

# Run as a script: a verb and its arguments.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -uo pipefail
	case ${1:-} in
	start) shift; start_node "$@" ;;
	stop) shift; stop_node "$@" ;;
	load) NODE_WORK=$(cd "$2" && pwd); node_load_image "$3" ;;
	*) echo "usage: $0 start WORKDIR KUBECONFIG APISERVER_URL | load WORKDIR TAR | stop WORKDIR" >&2; exit 2 ;;
	esac
fi
