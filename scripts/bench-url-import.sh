#!/usr/bin/env bash
# Times importing a .tar.xz over loopback HTTP (pe image import --tar URL,
# streamed, never stored) against importing the same file from disk, and
# the same for pe image build-erofs --tar; ROUNDS alternating repetitions
# in one run: wall time, CPU time (user + system, pe and its xz) and peak
# RSS (GNU time's %M: the largest single process, pe's own).
# The file is served by python3's http.server from its directory.
# Usage: scripts/bench-url-import.sh FILE.tar.xz
# Make FILE (kept outside the repository), e.g. a 1.5 GB toolchain:
#   tar -cf - -C / usr/lib/llvm-14 usr/lib/gcc usr/lib/x86_64-linux-gnu |
#     xz -T2 --block-size=8MiB -1 > /tmp/tarurl-bench/toolchain.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=$(realpath "$1")
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18432}
work=$(mktemp -d /tmp/pe-urlbench.XXXXXX)
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$(dirname "$tarball")" >/dev/null 2>&1 &
server=$!
trap 'kill $server; rm -rf "$work"' EXIT
go build -o "$work/pe" ./cmd/pe
url="http://127.0.0.1:$PORT/$(basename "$tarball")"
until curl -sfI "$url" >/dev/null; do sleep 0.2; done
echo "$(nproc) cores; $(stat -c %s "$tarball") bytes; $url"

run() { # LABEL CMD...
	local label=$1
	shift
	/usr/bin/time -f "%e %M %U %S" -o "$work/t" "$@" >/dev/null
	read -r s kb u sys <"$work/t"
	cpu=$(echo "$u + $sys" | bc -l)
	printf '%-22s %7.1f s %7.1f s CPU %7d MB peak RSS\n' "$label" "$s" "$cpu" $((kb / 1024))
	echo "$s" >>"$work/$label"
	echo "$cpu" >>"$work/$label.cpu"
	rm -rf "$work/out.erofs" "$work/cache"
}
for _ in $(seq "$ROUNDS"); do
	run import-file "$work/pe" image import --cache-dir "$work/cache" --tar "$tarball" --tag t:1
	run import-url "$work/pe" image import --cache-dir "$work/cache" --tar "$url" --tag t:1
	run build-erofs-file "$work/pe" image build-erofs --cache-dir "$work/cache" --tar "$tarball" -o "$work/out.erofs"
	run build-erofs-url "$work/pe" image build-erofs --cache-dir "$work/cache" --tar "$url" -o "$work/out.erofs"
done
median() { sort -n "$work/$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for l in import-file import-url build-erofs-file build-erofs-url; do
	printf 'median %-22s %7.1f s %7.1f s CPU\n' "$l" "$(median "$l")" "$(median "$l.cpu")"
done
