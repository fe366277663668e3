#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target for SECONDS from its committed corpus (fuzz/corpus/<target>,
# seeded from fuzz/seeds/<target>), then minimises the corpus. A crash fails the run and leaves its input
# in fuzz/artifacts/<target>/. cargo-fuzz is installed into .tools/cargo-fuzz on first use (pinned).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=$1
shift
root=$(cd .. && pwd)
tools=${RXG_TOOLS_DIR:-$root/.tools}
version=0.13.1
if [[ ! -x $tools/cargo-fuzz/bin/cargo-fuzz ]]; then
	cargo install --locked --quiet --root "$tools/cargo-fuzz" --version "$version" cargo-fuzz
fi
export PATH=$tools/cargo-fuzz/bin:$PATH
for target in "$@"; do
	mkdir -p "corpus/$target"
	[[ -d seeds/$target ]] && cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
	echo "== $target: ${seconds}s"
	cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
		-max_len=65536 2>&1 | grep -E '^(#[0-9]+ *DONE|Done [0-9]+ runs|==|.*SUMMARY|.*panicked)' || true
	[[ -z $(ls -A "artifacts/$target" 2>/dev/null) ]] || { echo "crash in $target: fuzz/artifacts/$target" >&2; exit 1; }
	cargo +nightly fuzz cmin "$target" "corpus/$target" >/dev/null 2>&1 || true
done
