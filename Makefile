# The targets CI runs, one to one. `make test` is what .ci/run calls: it installs the test toolchain,
# checks formatting, lints, checks the generated CRD for drift, and runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export RXG_TOOLS_DIR ?= $(CURDIR)/.tools
CRD := crds/imagesigningpolicies.registryx.io.yaml
CHART := charts/registryx-guard
HELM := $(RXG_TOOLS_DIR)/bin/helm

.PHONY: all tools fmt fmt-check lint crds crds-check chart scripts-check test demo bench bench-attestations soak fuzz image image-push clean

all: test

## tools: build and install the pinned test toolchain into .tools/bin (idempotent, cached)
tools:
	bash e2e/tools/install.sh

fmt:
	$(CARGO) fmt

## fmt-check: fail when any file is not rustfmt-formatted
fmt-check:
	$(CARGO) fmt -- --check

## lint: clippy on every target, warnings are errors
lint:
	$(CARGO) clippy --all-targets --locked -- -D warnings

## crds: regenerate crds/ (and the chart's copy) from the Rust types
crds:
	@mkdir -p crds
	$(CARGO) run --quiet --locked -- crdgen --output $(CRD)
	cp $(CRD) $(CHART)/crds/

## crds-check: fail when crds/ differs from what the Rust types generate
crds-check:
	@tmp=$$(mktemp); trap 'rm -f $$tmp' EXIT; \
	$(CARGO) run --quiet --locked -- crdgen --output $$tmp; \
	if ! diff -u $(CRD) $$tmp; then echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; fi; \
	if ! diff -u $(CRD) $(CHART)/crds/$(notdir $(CRD)); then echo "the chart's CRD is stale: run 'make crds'" >&2; exit 1; fi

## chart: helm lint, and helm template with the defaults and with an external webhook URL
chart: tools
	$(HELM) lint $(CHART)
	$(HELM) template rxg $(CHART) --namespace registryx-guard > /dev/null
	$(HELM) template rxg $(CHART) --namespace registryx-guard --set webhook.url=https://127.0.0.1:8443 > /dev/null

## scripts-check: the bench scripts parse, and BENCHMARKS.md's renderer writes no figure of its own
scripts-check:
	bash -n bench/run.sh bench/soak.sh bench/peers.sh bench/attestations.sh e2e/lib.sh
	python3 -m py_compile bench/load.py
	python3 -m unittest discover -s bench -p 'test_*.py'

## test: everything CI checks, against the real toolchain
test: tools fmt-check lint crds-check chart scripts-check
	$(CARGO) test --all-targets --locked --no-fail-fast

## demo: a local control plane and registry (see README)
demo: tools
	bash e2e/demo.sh

## bench: every measurement of BENCHMARKS.md, on this machine, loopback only (about 10 minutes); rewrites
## BENCHMARKS.md with the figures of this run (RXG_BENCH_SECONDS, RXG_BENCH_E2E_RUNS: see bench/run.sh)
bench: tools
	bash bench/run.sh

## image: the release binary as a reproducible OCI image, no Docker engine (target/image/oci and the
## docker-save tarball target/image/registryx-guard.tar); prints its digest
image:
	bash e2e/image/build.sh

## image-push: push it to REGISTRY with crane and sign it with cosign (COSIGN_KEY, default cosign.key)
image-push: tools
	bash e2e/image/push.sh

## bench-attestations: the cost of a required attestation only (a few minutes): cold verification with and
## without the requirement (requests, round trips) and the cached review (criterion); figures by hand into
## bench/attestation-results.md
bench-attestations: tools
	bash bench/attestations.sh

## soak: one server under mixed load for an hour (RXG_SOAK_SECONDS), RSS sampled; writes bench/soak-*.
soak: tools
	bash bench/soak.sh

## fuzz: every cargo-fuzz target of fuzz/ for FUZZ_SECONDS each (nightly toolchain; cargo-fuzz is
## installed into .tools on first use), from the committed corpus in fuzz/corpus
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := admission_review image_reference signature_payload bundle
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	$(CARGO) clean
	rm -rf .tools
