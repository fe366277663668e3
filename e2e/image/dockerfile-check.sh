#!/usr/bin/env bash
# `make dockerfile-check`: the Dockerfile cannot be built here (no container engine), so check what it
# would ship against what the reproducible image ships (e2e/image/build.sh) and what Cargo.toml builds
# with: the Rust toolchain (rust-version), the user (65532) and the entrypoint (/registryx-guard), and
# a locked release build. A change to one side without the other fails here instead of drifting.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dockerfile=${DOCKERFILE:-$root/Dockerfile}
build=$root/e2e/image/build.sh
failed=0
fail() { echo "$dockerfile: $*" >&2; failed=1; }

rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
[[ -n $rust ]] || { echo "no rust-version in Cargo.toml" >&2; exit 1; }
grep -Eq "^FROM [^ ]*rust:$rust([.-][^ ]*)? AS build\$" "$dockerfile" ||
	fail "the builder is not rust:$rust (Cargo.toml's rust-version)"
grep -Eq '^RUN cargo build --release --locked' "$dockerfile" || fail "no 'cargo build --release --locked'"

uid=$(sed -n 's/.*--uid \([0-9]*\).*/\1/p' "$build")
gid=$(sed -n 's/.*--gid \([0-9]*\).*/\1/p' "$build")
[[ -n $uid && -n $gid ]] || { echo "$build: no --uid/--gid" >&2; exit 1; }
[[ $(grep -c '^USER ' "$dockerfile") == 1 ]] && grep -q "^USER $uid:$gid\$" "$dockerfile" ||
	fail "USER is not $uid:$gid, the user of $build"

entrypoint=$(sed -n 's/.*--entrypoint \([^ ]*\).*/\1/p' "$build")
[[ -n $entrypoint ]] || { echo "$build: no --entrypoint" >&2; exit 1; }
grep -q "^ENTRYPOINT \[\"$entrypoint\"\]\$" "$dockerfile" ||
	fail "ENTRYPOINT is not [\"$entrypoint\"], the entrypoint of $build"
grep -Eq "^COPY --from=build [^ ]+/registryx-guard $entrypoint\$" "$dockerfile" ||
	fail "the binary is not copied to $entrypoint"

exit $failed
