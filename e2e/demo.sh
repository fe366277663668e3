#!/usr/bin/env bash
# The local demo (README, Quick start): a control plane and a registry on this machine, one image signed
# by cosign and one not, narrated step by step. Stops everything it started when it ends.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT

say "Starting etcd and kube-apiserver (no kubelet: objects are admitted and stored, never run)"
start_control_plane
kubectl get --raw /readyz && echo "  <- kube-apiserver /readyz"

say "Starting an OCI registry (the CNCF distribution registry) on loopback"
start_registry
echo "registry at http://$REGISTRY"

say "Building and pushing two images"
signed=$(push_image demo/app signed "signed $RANDOM")
unsigned=$(push_image demo/app unsigned "unsigned $RANDOM")
echo "signed:   $signed"
echo "unsigned: $unsigned"

say "Signing one with cosign, as RegistryX's signing guide does (cosign generate-key-pair; cosign sign --key)"
export COSIGN_PASSWORD=demo
(cd "$RXG_WORK" && cosign generate-key-pair >/dev/null 2>&1)
cosign sign --yes --key "$RXG_WORK/cosign.key" --tlog-upload=false --use-signing-config=false \
	--new-bundle-format=false "$signed" 2>&1 | sed 's/^/  cosign: /'
crane ls --insecure "$REGISTRY/demo/app" | sed 's/^/  tag: /'

say "cosign's own verdicts"
cosign verify --key "$RXG_WORK/cosign.pub" --insecure-ignore-tlog=true --offline=true --new-bundle-format=false "$signed" >/dev/null 2>&1 &&
	echo "  signed image:   verified"
cosign verify --key "$RXG_WORK/cosign.pub" --insecure-ignore-tlog=true --offline=true --new-bundle-format=false "$unsigned" >/dev/null 2>&1 ||
	echo "  unsigned image: no valid signature"

say "What comes next"
cat <<TEXT
The control plane, the registry and the signatures above are real. The webhook that refuses the unsigned
image at admission is not built yet: the verification engine (issue 3), the ImageSigningPolicy controller
(issue 4), the webhook (issue 5) and the chart (issue 6) will extend this demo to install registryx-guard,
apply a policy and show 'kubectl run' of the unsigned image refused and of the signed one admitted.
TEXT
if [[ -n ${RXG_DEMO_HOLD:-} ]]; then
	say "Holding; KUBECONFIG=$KUBECONFIG. Ctrl-C tears everything down."
	sleep infinity
fi
say "Tearing down"
