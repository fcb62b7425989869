#!/usr/bin/env bash
# Compares `pe image build-erofs` with mkfs.erofs (erofs-utils) on the same
# tree, in one run: wall time, peak memory and image size, each the median of
# ROUNDS alternating runs. Usage: scripts/bench-erofs.sh [TREE]
# TREE defaults to a copy of the Go toolchain's source (GOROOT/src).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
need() { command -v "$1" >/dev/null || { echo "installing $2" >&2; apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need mkfs.erofs erofs-utils
[ -x /usr/bin/time ] || need /usr/bin/time time

work=$(mktemp -d /tmp/pe-bench.XXXXXX)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT

tree=${1:-}
if [ -z "$tree" ]; then
	tree=$work/tree
	cp -a "$(go env GOROOT)/src" "$tree"
fi
go build -o "$work/pe-bin" ./cmd/pe

files=$(find "$tree" | wc -l)
bytes=$(du -sb "$tree" | cut -f1)

# run LABEL CMD... appends "seconds kilobytes" to $work/LABEL.
run() {
	local label=$1
	shift
	rm -f "$work/out.erofs"
	sync
	/usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
	cat "$work/time" >>"$work/$label"
	stat -c %s "$work/out.erofs" >"$work/$label.size"
}
for _ in $(seq "$ROUNDS"); do
	run mkfs mkfs.erofs --quiet "$work/out.erofs" "$tree"
	run pe "$work/pe-bin" image build-erofs "$tree" -o "$work/out.erofs"
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mkfs_s=$(cut -d' ' -f1 "$work/mkfs" | median)
pe_s=$(cut -d' ' -f1 "$work/pe" | median)
mkfs_kb=$(cut -d' ' -f2 "$work/mkfs" | median)
pe_kb=$(cut -d' ' -f2 "$work/pe" | median)
mkfs_size=$(cat "$work/mkfs.size")
pe_size=$(cat "$work/pe.size")

# The last pe image must match the tree when mounted (when we can mount).
if [ "$(id -u)" = 0 ] && mkdir -p "$work/mnt" && mount -t erofs -o loop,ro "$work/out.erofs" "$work/mnt" 2>/dev/null; then
	diff -r --no-dereference "$tree" "$work/mnt" >/dev/null && check="mounted pe image identical to the tree (diff -r)" || check="MOUNTED IMAGE DIFFERS"
	umount "$work/mnt"
else
	check="not mounted (needs root and loop devices)"
fi

ver=$(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo '?')
awk -v files="$files" -v bytes="$bytes" -v rounds="$ROUNDS" -v ver="$ver" \
	-v ms="$mkfs_s" -v ps="$pe_s" -v mk="$mkfs_kb" -v pk="$pe_kb" -v msz="$mkfs_size" -v psz="$pe_size" -v check="$check" 'BEGIN {
	printf "tree: %d entries, %d bytes; %d rounds, medians\n", files, bytes, rounds
	printf "| tool | wall s | peak RSS MB | image bytes |\n|---|---|---|---|\n"
	printf "| mkfs.erofs %s | %.2f | %.1f | %d |\n", ver, ms, mk / 1024, msz
	printf "| pe image build-erofs | %.2f | %.1f | %d |\n", ps, pk / 1024, psz
	printf "pe/mkfs: time %.2f, size %.3f; %s\n", ps / ms, psz / msz, check
}'
