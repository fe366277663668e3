# Shell helpers of the e2e scenario and the demo: start the real tools of .tools/bin on free loopback
# ports, in a work folder that `cleanup` removes. Source it; it defines functions and sets no options.

RXG_ROOT=${RXG_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
RXG_TOOLS_DIR=${RXG_TOOLS_DIR:-$RXG_ROOT/.tools}
PATH=$RXG_TOOLS_DIR/bin:$PATH
RXG_WORK=${RXG_WORK:-$(mktemp -d -t registryx-guard.XXXXXX)}
RXG_PIDS=()

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

free_port() { python3 "$RXG_ROOT/e2e/free_port.py"; }

# wait_for WHAT SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
	local what=$1 seconds=$2
	shift 2
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS > deadline)); then
			echo "timed out waiting for $what; logs in $RXG_WORK" >&2
			return 1
		fi
		sleep 0.2
	done
}

# cleanup: stops what was started, newest first (the API server before its etcd), killing what has not
# exited two seconds after SIGTERM: a demo's teardown must not wait on graceful shutdowns.
cleanup() {
	local i pid
	for ((i = ${#RXG_PIDS[@]} - 1; i >= 0; i--)); do
		pid=${RXG_PIDS[i]}
		kill "$pid" 2>/dev/null || continue
		for _ in {1..20}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	[[ -n ${RXG_KEEP_WORK:-} ]] || rm -rf "$RXG_WORK"
}

# start_registry [IP]: the distribution registry on IP (default 127.0.0.1); sets REGISTRY (IP:port).
start_registry() {
	local port ip=${1:-127.0.0.1}
	port=$(free_port)
	mkdir -p "$RXG_WORK/registry"
	# The blob descriptor cache as in Debian's packaged /etc/docker/registry/config.yml (and the
	# registry image's): without it every manifest read stats its blobs on disk again.
	cat >"$RXG_WORK/registry/config.yml" <<-YAML
		version: 0.1
		log: {level: warn}
		storage: {filesystem: {rootdirectory: $RXG_WORK/registry/data}, cache: {blobdescriptor: inmemory}}
		http: {addr: $ip:$port}
	YAML
	registry serve "$RXG_WORK/registry/config.yml" >"$RXG_WORK/registry.log" 2>&1 &
	RXG_PIDS+=($!)
	REGISTRY=$ip:$port
	wait_for "the registry" 20 curl -fsS "http://$REGISTRY/v2/"
}

# start_control_plane [pods]: etcd and kube-apiserver; sets KUBECONFIG and APISERVER. With `pods`, for a
# node that runs them (e2e/node.sh): the ServiceAccount admission plugin on, Services reached by their
# endpoints (no kube-proxy needed for webhooks).
start_control_plane() {
	local dir=$RXG_WORK/cluster client peer api token=demo-admin-$RANDOM$RANDOM
	local mode=(--disable-admission-plugins ServiceAccount)
	[[ ${1:-} == pods ]] && mode=(--enable-aggregator-routing=true)
	mkdir -p "$dir"
	client=$(free_port) peer=$(free_port) api=$(free_port)
	etcd --data-dir "$dir/etcd" --log-level warn --unsafe-no-fsync \
		--listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
		--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "default=http://127.0.0.1:$peer" >"$RXG_WORK/etcd.log" 2>&1 &
	RXG_PIDS+=($!)
	wait_for etcd 30 curl -fsS "http://127.0.0.1:$client/health"

	openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key"
	openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
	echo "$token,admin,admin-uid,system:masters" >"$dir/tokens.csv"
	kube-apiserver --etcd-servers "http://127.0.0.1:$client" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
		--secure-port "$api" --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" \
		--service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
		--service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.96.0.0/16 \
		--authorization-mode Node,RBAC "${mode[@]}" -v 1 >"$RXG_WORK/kube-apiserver.log" 2>&1 &
	RXG_PIDS+=($!)
	export KUBECONFIG=$dir/kubeconfig APISERVER=https://127.0.0.1:$api
	kubectl config set-cluster demo --server "https://127.0.0.1:$api" --insecure-skip-tls-verify=true >/dev/null
	kubectl config set-credentials admin --token "$token" >/dev/null
	kubectl config set-context demo --cluster demo --user admin >/dev/null
	kubectl config use-context demo >/dev/null
	wait_for kube-apiserver 120 kubectl get --raw /readyz
}

# push_image REPOSITORY TAG SEED: builds a one-layer image whose digest depends on SEED and pushes it with
# crane; prints the reference by tag.
push_image() {
	local repository=$1 tag=$2 seed=$3 dir=$RXG_WORK/image-$RANDOM
	mkdir -p "$dir/root"
	echo "$seed" >"$dir/root/seed"
	tar -C "$dir/root" -cf "$dir/layer.tar" seed
	crane append --insecure --new_layer "$dir/layer.tar" --new_tag "$REGISTRY/$repository:$tag" >/dev/null 2>&1
	crane digest --insecure "$REGISTRY/$repository:$tag" >/dev/null 2>&1
	echo "$REGISTRY/$repository:$tag"
}

# start_webhook PORT: registryx-guard serve outside the cluster, with the TLS pair the chart generated,
# answering the webhook configurations that point at https://127.0.0.1:PORT.
start_webhook() {
	local port=$1 probes
	probes=$(free_port)
	mkdir -p "$RXG_WORK/webhook"
	kubectl get secret rxg-tls -n registryx-guard -o 'jsonpath={.data.tls\.crt}' | base64 -d >"$RXG_WORK/webhook/tls.crt"
	kubectl get secret rxg-tls -n registryx-guard -o 'jsonpath={.data.tls\.key}' | base64 -d >"$RXG_WORK/webhook/tls.key"
	"$RXG_ROOT/target/debug/registryx-guard" serve --namespace registryx-guard \
		--listen "127.0.0.1:$port" --probes-listen "127.0.0.1:$probes" \
		--tls-cert "$RXG_WORK/webhook/tls.crt" --tls-key "$RXG_WORK/webhook/tls.key" >"$RXG_WORK/webhook.log" 2>&1 &
	RXG_PIDS+=($!)
	wait_for "registryx-guard to be ready" 30 curl -fsS "http://127.0.0.1:$probes/readyz"
}

# make_tls DIR CA_NAME: a CA (DIR/ca.crt) and a serving certificate for 127.0.0.1 signed by it (DIR/tls.crt,
# DIR/tls.key), valid two days: what a loopback `registryx-guard serve` needs for the benches.
make_tls() {
	local dir=$1
	mkdir -p "$dir"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$2" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
		-keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
		-keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$dir/ext"
	openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
		-extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null
}
