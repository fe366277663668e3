#!/usr/bin/env bash
# The local demo (README, Quick start): a cluster that runs pods on this machine (etcd, kube-apiserver,
# and one node: containerd, runc, kubelet, scheduler, controller-manager), registryx-guard's own image
# built without a Docker engine and installed with `helm install` (chart defaults), a policy applied with
# kubectl in a namespace that opts in, a signed Deployment running and an unsigned one refused. Stops
# everything it started when it ends (RXG_DEMO_HOLD=1 keeps it up until Ctrl-C). Needs root.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$RXG_ROOT/e2e/node.sh"
node_work=$RXG_WORK/node
teardown() {
	[[ -d $node_work ]] && stop_node "$node_work"
	cleanup
}
trap teardown EXIT
show() { printf '\n$ %s\n' "$*"; "$@"; }

say "Building registryx-guard and its image (no Docker engine: e2e/image/build.sh)"
(cd "$RXG_ROOT" && cargo build --quiet --locked)
BINARY=$RXG_ROOT/target/debug/registryx-guard OUT=$RXG_WORK/image bash "$RXG_ROOT/e2e/image/build.sh"

say "Starting etcd, kube-apiserver and a node that runs pods"
start_control_plane pods
start_node "$node_work" "$KUBECONFIG" "$APISERVER"
node_load_image "$RXG_WORK/image/registryx-guard.tar" >/dev/null
show kubectl get nodes

say "Installing registryx-guard with helm, the chart's defaults"
show helm install rxg "$RXG_ROOT/charts/registryx-guard" --namespace registryx-guard --create-namespace --wait --timeout 180s
show kubectl -n registryx-guard get pods

say "A registry on the node's address, with a signed and an unsigned image (a static binary that runs)"
# shellcheck disable=SC1091
source "$node_work/node.env"
start_registry "$NODE_IP"
mkdir -p "$node_work/containerd/certs.d/$REGISTRY"
printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$REGISTRY" "$REGISTRY" \
	>"$node_work/containerd/certs.d/$REGISTRY/hosts.toml"
for seed in signed unsigned; do
	python3 "$RXG_ROOT/e2e/image/oci-image.py" --file "$RXG_TOOLS_DIR/bin/pause:/pause" --entrypoint /pause \
		--label "seed=$seed $RANDOM" --oci-dir "$RXG_WORK/app-$seed" >/dev/null
	crane push --insecure "$RXG_WORK/app-$seed" "$REGISTRY/demo/app:$seed" >/dev/null 2>&1
done
signed=$REGISTRY/demo/app:signed unsigned=$REGISTRY/demo/app:unsigned
export COSIGN_PASSWORD=demo
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
show cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
	--new-bundle-format=false --allow-http-registry "$signed" 2>/dev/null

say "Applying a policy: every image of $REGISTRY/demo must be signed with the demo key"
{
	cat <<-YAML
		apiVersion: registryx.io/v1alpha1
		kind: ImageSigningPolicy
		metadata:
		  name: demo-signed
		spec:
		  images: ["$REGISTRY/demo/**"]
		  registry: {insecure: true}
		  authorities:
		    - name: demo-key
		      key:
		        data: |
	YAML
	sed 's/^/          /' "$RXG_WORK/cosign.pub"
} >"$RXG_WORK/policy.yaml"
cat "$RXG_WORK/policy.yaml"
show kubectl apply -f "$RXG_WORK/policy.yaml"
wait_for "the policy to be Ready" 30 bash -c "kubectl get isp demo-signed -o jsonpath='{.status.conditions[0].status}' | grep -qx True"
show kubectl get imagesigningpolicies

say "Namespaces opt in with a label (the chart's default); in them, only what a policy vouches for runs"
show kubectl label namespace default registryx.io/include=true

say "The signed Deployment runs, pinned to the digest that was verified"
show kubectl create deployment signed --image "$signed"
wait_for "the signed pod to run" 90 bash -c "kubectl get pods -l app=signed -o jsonpath='{.items[*].status.phase}' | grep -qx Running"
show kubectl get pods -l app=signed -o 'custom-columns=POD:.metadata.name,STATUS:.status.phase,IMAGE:.spec.containers[0].image'

say "The unsigned Deployment is refused, with the reason"
if show kubectl create deployment unsigned --image "$unsigned"; then
	echo "UNEXPECTED: the unsigned image was admitted" >&2
	exit 1
fi

say "Another spelling of the registry is the same registry: refused as well"
respelled=${unsigned/:/:0}
if show kubectl run respelled --image "$respelled" --restart Never; then
	echo "UNEXPECTED: the respelled unsigned image was admitted" >&2
	exit 1
fi

say "An image no policy vouches for is refused too"
if show kubectl run unmatched --image docker.io/library/busybox:1.36 --restart Never; then
	echo "UNEXPECTED: an image no policy governs was admitted" >&2
	exit 1
fi

say "Each refusal is also an event on the policy that refused (reason NoSignature)"
sleep 2
show kubectl get events --field-selector involvedObject.name=demo-signed,type=Warning \
	-o 'custom-columns=REASON:.reason,MESSAGE:.message' || true

say "The same decision from a shell: registryx-guard verify"
show "$RXG_ROOT/target/debug/registryx-guard" verify "$unsigned" --policy "$RXG_WORK/policy.yaml" || true

if [[ -n ${RXG_DEMO_HOLD:-} ]]; then
	say "Holding; KUBECONFIG=$KUBECONFIG. Ctrl-C tears everything down."
	sleep infinity
fi
say "Tearing down (everything ran under $RXG_WORK)"
