#!/usr/bin/env bash
# Compares `pe image build-erofs --compress lz4hc` with `mkfs.erofs -zlz4hc`
# (same lz4hc level, same pcluster size) on the tree of bench-erofs.sh: wall
# time, CPU time, peak memory and image size, each the median of ROUNDS
# alternating runs. Then it loop-mounts pe's uncompressed image, pe's lz4hc
# image and mkfs's lz4hc image and reads every file (cat, cold cache: the page
# cache is dropped before each read), ROUNDS times each, and reports the median
# throughput. Needs root for the mounts and the cache drops.
#
# Usage: scripts/bench-erofs-lz4.sh [TREE]
#   TREE      defaults to a copy of the Go toolchain's source (GOROOT/src)
#   PCLUSTER  pcluster size in bytes for both tools (default 4096, the block size)
#   LEVEL     lz4hc level for both tools (default 9, the default of both)
#   ROUNDS    rounds (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
PCLUSTER=${PCLUSTER:-4096}
LEVEL=${LEVEL:-9}
need() { command -v "$1" >/dev/null || { echo "installing $2" >&2; apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need mkfs.erofs erofs-utils
[ -x /usr/bin/time ] || need /usr/bin/time time

work=$(mktemp -d /tmp/pe-bench-lz4.XXXXXX)
cleanup() {
	for m in "$work"/mnt-*; do umount "$m" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

tree=${1:-}
if [ -z "$tree" ]; then
	tree=$work/tree
	cp -a "$(go env GOROOT)/src" "$tree"
fi
go build -o "$work/pe-bin" ./cmd/pe

files=$(find "$tree" -type f | wc -l)
bytes=$(du -sb "$tree" | cut -f1)

# build LABEL OUT CMD... appends "wall user+sys kilobytes" to $work/LABEL and
# keeps the image.
build() {
	local label=$1 out=$2
	shift 2
	rm -f "$out"
	sync
	/usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null
	awk '{print $1, $2 + $3, $4}' "$work/time" >>"$work/$label"
	stat -c %s "$out" >"$work/$label.size"
}
for _ in $(seq "$ROUNDS"); do
	build mkfs "$work/mkfs.erofs" mkfs.erofs --quiet "-zlz4hc,$LEVEL" "-C$PCLUSTER" "$work/mkfs.erofs" "$tree"
	build pe "$work/pe.erofs" "$work/pe-bin" image build-erofs "$tree" -o "$work/pe.erofs" \
		--compress "lz4hc:$LEVEL" --pcluster-size "$PCLUSTER"
done
"$work/pe-bin" image build-erofs "$tree" -o "$work/plain.erofs"
stat -c %s "$work/plain.erofs" >"$work/plain.size"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { cut -d' ' -f"$2" "$work/$1" | median; }

# Read throughput: cat every file of each mounted image, cold cache. The
# images take turns round by round, so load from elsewhere on the machine
# falls on all of them alike; prints "MB/s seconds" per image, medians.
read_all() {
	local i img
	for i in "$@"; do
		mkdir -p "$work/mnt-$i"
		mount -t erofs -o loop,ro "$work/$i.erofs" "$work/mnt-$i"
	done
	for _ in $(seq "$ROUNDS"); do
		for i in "$@"; do
			sync
			echo 3 >/proc/sys/vm/drop_caches
			local t0 t1
			t0=$(date +%s.%N)
			find "$work/mnt-$i" -type f -print0 | xargs -0 cat >/dev/null
			t1=$(date +%s.%N)
			awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}' >>"$work/read-$i"
		done
	done
	for i in "$@"; do
		umount "$work/mnt-$i"
		median <"$work/read-$i" | awk -v b="$bytes" '{printf "%.0f %.2f ", b / $1 / 1e6, $1}'
	done
}

check="not mounted (needs root and loop devices)"
reads=""
if [ "$(id -u)" = 0 ] && mkdir -p "$work/mnt-check" && mount -t erofs -o loop,ro "$work/pe.erofs" "$work/mnt-check" 2>/dev/null; then
	diff -r --no-dereference "$tree" "$work/mnt-check" >/dev/null && check="mounted pe lz4hc image identical to the tree (diff -r)" || check="MOUNTED IMAGE DIFFERS"
	umount "$work/mnt-check"
	reads=$(read_all plain pe mkfs)
fi

ver=$(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo '?')
awk -v files="$files" -v bytes="$bytes" -v rounds="$ROUNDS" -v ver="$ver" -v pc="$PCLUSTER" -v lvl="$LEVEL" \
	-v ms="$(col mkfs 1)" -v ps="$(col pe 1)" -v mc="$(col mkfs 2)" -v pcpu="$(col pe 2)" \
	-v mk="$(col mkfs 3)" -v pk="$(col pe 3)" -v msz="$(cat "$work/mkfs.size")" -v psz="$(cat "$work/pe.size")" \
	-v plsz="$(cat "$work/plain.size")" -v check="$check" -v reads="$reads" 'BEGIN {
	printf "tree: %d files, %d bytes; lz4hc level %d, pcluster %d bytes; %d rounds, medians\n", files, bytes, lvl, pc, rounds
	printf "| tool | wall s | CPU s | peak RSS MB | image bytes |\n|---|---|---|---|---|\n"
	printf "| mkfs.erofs %s -zlz4hc,%d -C%d | %.2f | %.2f | %.1f | %d |\n", ver, lvl, pc, ms, mc, mk / 1024, msz
	printf "| pe image build-erofs --compress lz4hc:%d --pcluster-size %d | %.2f | %.2f | %.1f | %d |\n", lvl, pc, ps, pcpu, pk / 1024, psz
	printf "pe/mkfs: wall %.2f, CPU %.2f, size %.3f (uncompressed pe image: %d bytes); %s\n", ps / ms, pcpu / mc, psz / msz, plsz, check
	if (reads != "") {
		split(reads, r, " ")
		printf "\nread all files, cold cache (MB/s of file data, seconds):\n| image | MB/s | s |\n|---|---|---|\n"
		printf "| pe uncompressed | %d | %.2f |\n| pe lz4hc | %d | %.2f |\n| mkfs.erofs lz4hc | %d | %.2f |\n", r[1], r[2], r[3], r[4], r[5], r[6]
	}
}'
