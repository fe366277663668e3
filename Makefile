# The targets CI runs, one to one. `make test` is what .ci/run calls: it installs the test toolchain,
# checks formatting, lints, checks the generated CRD for drift, checks the chart and its alert rules,
# and runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export RXG_TOOLS_DIR ?= $(CURDIR)/.tools
CRD := crds/imagesigningpolicies.registryx.io.yaml
# The wgpolicyk8s.io PolicyReport CRDs (src/audit/reports.rs), and the chart's copy, installed only with
# audit.policyReports.installCRD=true (clusters with Kyverno have them already).
REPORTS_CRD := crds/policyreports.wgpolicyk8s.io.yaml
REPORTS_TEMPLATE := charts/registryx-guard/templates/policyreports-crd.yaml
REPORTS_GUARD := {{- if .Values.audit.policyReports.installCRD }}
CHART := charts/registryx-guard
HELM := $(RXG_TOOLS_DIR)/bin/helm
PROMTOOL := $(RXG_TOOLS_DIR)/bin/promtool
ALERTS := $(CHART)/files/alerts.yaml
# The chart with its optional monitoring objects on: what make chart and make alerts-check render.
MONITORING := --set monitoring.prometheusRule.enabled=true --set monitoring.serviceMonitor.enabled=true

.PHONY: all tools fmt fmt-check lint crds crds-check chart alerts-check scripts-check test demo bench bench-attestations soak fuzz image image-push release dockerfile-check clean

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
	$(CARGO) run --quiet --locked -- crdgen --policy-reports --output $(REPORTS_CRD)
	{ echo '$(REPORTS_GUARD)'; cat $(REPORTS_CRD); echo '{{- end }}'; } > $(REPORTS_TEMPLATE)

## crds-check: fail when crds/ differs from what the Rust types generate
crds-check:
	@tmp=$$(mktemp); trap 'rm -f $$tmp' EXIT; \
	$(CARGO) run --quiet --locked -- crdgen --output $$tmp; \
	if ! diff -u $(CRD) $$tmp; then echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; fi; \
	if ! diff -u $(CRD) $(CHART)/crds/$(notdir $(CRD)); then echo "the chart's CRD is stale: run 'make crds'" >&2; exit 1; fi; \
	$(CARGO) run --quiet --locked -- crdgen --policy-reports --output $$tmp; \
	if ! diff -u $(REPORTS_CRD) $$tmp; then echo "$(REPORTS_CRD) is stale: run 'make crds' and commit the result" >&2; exit 1; fi; \
	if ! diff -u $(REPORTS_TEMPLATE) <(echo '$(REPORTS_GUARD)'; cat $$tmp; echo '{{- end }}'); then echo "the chart's PolicyReport CRDs are stale: run 'make crds'" >&2; exit 1; fi

## chart: helm lint, and helm template with the defaults, with an external webhook URL, and with the
## monitoring (PrometheusRule and ServiceMonitor) on, and with the webhook's own policy (selfPolicy) on
chart: tools
	$(HELM) lint $(CHART)
	$(HELM) lint $(CHART) $(MONITORING)
	$(HELM) template rxg $(CHART) --namespace registryx-guard > /dev/null
	$(HELM) template rxg $(CHART) --namespace registryx-guard --set webhook.url=https://127.0.0.1:8443 > /dev/null
	$(HELM) template rxg $(CHART) --namespace registryx-guard $(MONITORING) > /dev/null
	$(HELM) template rxg $(CHART) --namespace registryx-guard --set audit.policyReports.installCRD=true \
		--show-only templates/policyreports-crd.yaml > /dev/null
	@key=$$(mktemp); trap 'rm -f $$key' EXIT; \
	openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout -out $$key 2>/dev/null; \
	$(HELM) lint $(CHART) --set selfPolicy.enabled=true --set-file selfPolicy.publicKey=$$key; \
	$(HELM) template rxg $(CHART) --namespace registryx-guard --set selfPolicy.enabled=true \
		--set-file selfPolicy.publicKey=$$key --show-only templates/selfpolicy.yaml > /dev/null

## alerts-check: the chart's alert rules: promtool check rules, promtool test rules (tests/alerts/), and
## tests/alerts/check.py (the PrometheusRule renders the rule file's groups; each alert fires and stays
## quiet in some test)
alerts-check: tools
	$(PROMTOOL) check rules $(ALERTS)
	$(PROMTOOL) test rules tests/alerts/alerts_test.yaml
	$(HELM) template rxg $(CHART) --namespace registryx-guard $(MONITORING) \
		| python3 tests/alerts/check.py $(ALERTS) tests/alerts/alerts_test.yaml

## scripts-check: the bench scripts parse, and BENCHMARKS.md's renderer writes no figure of its own
scripts-check:
	bash -n bench/run.sh bench/soak.sh bench/peers.sh bench/attestations.sh e2e/lib.sh e2e/release.sh
	python3 -m py_compile bench/load.py
	python3 -m unittest discover -s bench -p 'test_*.py'

## test: everything CI checks, against the real toolchain
test: tools fmt-check lint crds-check chart alerts-check scripts-check dockerfile-check
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

## release: the image pushed by digest and signed, and the chart pinned to that digest, pushed to
## oci://REGISTRY/charts and signed (REGISTRY, COSIGN_KEY default cosign.key, PLAIN_HTTP=1 for a
## plain-HTTP registry; COSIGN_SIGN_FLAGS for cosign sign); prints what a user runs to verify and install.
## Needs crane, cosign and helm (.tools/bin or PATH), not the whole test toolchain
release:
	bash e2e/release.sh

## dockerfile-check: the Dockerfile (for users who build their own image; no engine here) agrees with
## the reproducible image and Cargo.toml: Rust version, user, entrypoint
dockerfile-check:
	bash e2e/image/dockerfile-check.sh

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
