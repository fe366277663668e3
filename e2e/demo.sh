#!/usr/bin/env bash
# The local demo (README, Quick start): a control plane and a registry on this machine, registryx-guard
# installed with helm, a policy applied with kubectl, and an unsigned pod refused while a signed one is
# admitted. Stops everything it started when it ends (RXG_DEMO_HOLD=1 keeps it up until Ctrl-C).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
show() { printf '\n$ %s\n' "$*"; "$@"; }

say "Building registryx-guard"
(cd "$RXG_ROOT" && cargo build --quiet --locked)

say "Starting etcd and kube-apiserver (no kubelet: pods are admitted and stored, never run)"
start_control_plane
echo "KUBECONFIG=$KUBECONFIG"

say "Starting an OCI registry and pushing two images"
start_registry
signed=$(push_image demo/app signed "signed $RANDOM")
unsigned=$(push_image demo/app unsigned "unsigned $RANDOM")
echo "signed:   $signed"
echo "unsigned: $unsigned"

say "Signing one of them, as RegistryX's signing guide does"
export COSIGN_PASSWORD=demo
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
	--new-bundle-format=false "$signed" >/dev/null 2>&1
echo "signed $signed with $RXG_WORK/cosign.key"

say "Installing registryx-guard with helm (the webhook process runs outside the cluster)"
port=$(free_port)
show helm install rxg "$RXG_ROOT/charts/registryx-guard" --namespace registryx-guard --create-namespace \
	--set "webhook.url=https://127.0.0.1:$port" --set replicaCount=0
start_webhook "$port"

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
wait_for "the policy to be Ready" 20 bash -c "kubectl get isp demo-signed -o jsonpath='{.status.conditions[0].status}' | grep -qx True"
show kubectl get imagesigningpolicies

say "Namespaces opt in with a label (the chart's default); in them, only what a policy vouches for runs"
show kubectl label namespace default registryx.io/include=true

say "The signed image is admitted, pinned to the digest that was verified"
show kubectl run signed --image "$signed" --restart Never

show kubectl get pod signed -o 'jsonpath={.spec.containers[0].image}{"\n"}'

say "The unsigned image is refused, with the reason"
if show kubectl run unsigned --image "$unsigned" --restart Never; then
	echo "UNEXPECTED: the unsigned image was admitted" >&2
	exit 1
fi

say "Another spelling of the registry is the same registry: refused as well"
respelled=${unsigned/127.0.0.1:/127.0.0.1:0}
if show kubectl run respelled --image "$respelled" --restart Never; then
	echo "UNEXPECTED: the respelled unsigned image was admitted" >&2
	exit 1
fi

say "An image no policy vouches for is refused too"
if show kubectl run unmatched --image docker.io/library/busybox:1.36 --restart Never; then
	echo "UNEXPECTED: an image no policy governs was admitted" >&2
	exit 1
fi

say "The same decision from a shell: registryx-guard verify"
show "$RXG_ROOT/target/debug/registryx-guard" verify "$unsigned" --policy "$RXG_WORK/policy.yaml" || true

if [[ -n ${RXG_DEMO_HOLD:-} ]]; then
	say "Holding; KUBECONFIG=$KUBECONFIG. Ctrl-C tears everything down."
	sleep infinity
fi
say "Tearing down (everything ran under $RXG_WORK)"
