# Sourced by e2e/tools/install.sh and bench/peers.sh: one binary per tool in "$bin", each with a stamp of
# what built it in "$stamps/<name>" (its pinned version, or the hash of its wrapper module), so that a
# tool whose stamp matches is not rebuilt. The sourcing script defines `log`, `bin` and `stamps`.

# up_to_date NAME STAMP: true when bin/NAME exists and was built from STAMP.
up_to_date() {
	[[ -x $bin/$1 ]] && [[ -f $stamps/$1 ]] && [[ $(<"$stamps/$1") == "$2" ]]
}

# build NAME STAMP COMMAND...: runs COMMAND unless NAME is up to date, then records STAMP. A failure
# returns 1 after logging why (under `set -e`, the caller stops there).
build() {
	local name=$1 stamp=$2
	shift 2
	if up_to_date "$name" "$stamp"; then
		return
	fi
	log "building $name ($stamp)"
	local start=$SECONDS
	rm -f "$stamps/$name"
	"$@" || { log "FAILED: $name after $((SECONDS - start))s"; return 1; }
	[[ -x $bin/$name ]] || { log "FAILED: $name was not produced"; return 1; }
	printf '%s' "$stamp" >"$stamps/$name"
	log "built $name in $((SECONDS - start))s"
}
