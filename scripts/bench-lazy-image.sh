#!/usr/bin/env bash
# bench-lazy-image.sh: builds (once) the ~1.5 GB compiler image that
# scripts/bench-lazy.sh runs `gcc -c hello.c` from: a Debian root file
# system (mmdebstrap --variant=minbase of the host's suite, with gcc, g++,
# gfortran, clang, llvm, lld, gdb and their libraries, no recommends) as a
# tar, then `pe image build-erofs` of it. Both are kept in $BENCH_CACHE
# (default /work/bench-cache, outside the repository) so that reruns skip
# the build (the EROFS is made again from the tar when the pe binary
# changed); the script prints the EROFS file's path.
#
# Needs root (mmdebstrap runs apt and dpkg in a chroot) and Debian's
# package archive through apt; installs mmdebstrap when missing.
#
# Usage: scripts/bench-lazy-image.sh [PE]   (PE: the pe binary, default bin/pe)
#        PACKAGES="gcc ..." SUITE=bookworm BENCH_CACHE=DIR scripts/bench-lazy-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PE=${1:-bin/pe}
BENCH_CACHE=${BENCH_CACHE:-/work/bench-cache}
SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
PACKAGES=${PACKAGES:-"build-essential gfortran clang llvm lld gdb libclang-dev llvm-dev"}
NAME=${IMAGE_NAME:-gcc-1.5g}
tarball=$BENCH_CACHE/$NAME.tar
out=$BENCH_CACHE/$NAME.erofs
mkdir -p "$BENCH_CACHE"

if [ ! -s "$tarball" ]; then
	command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null; }
	# The host's apt sources, so that the chroot reaches Debian the way
	# the host does (a deb822 file or a one-line sources.list).
	mirror=()
	for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
		if [ -s "$f" ] && grep -q '^[^#]' "$f"; then
			mirror=("$f")
			break
		fi
	done
	echo "bench-lazy-image: building $tarball ($SUITE, minbase + $PACKAGES)" >&2
	mmdebstrap --variant=minbase --mode=root --format=tar \
		--aptopt='APT::Install-Recommends "false"' \
		--include="$(echo "$PACKAGES" | tr ' ' ,)" \
		--customize-hook='chroot "$1" sh -c "printf \"int main(void) { return 0; }\n\" >/tmp/t.c && gcc -c -o /tmp/t.o /tmp/t.c && rm /tmp/t.c /tmp/t.o"' \
		"$SUITE" "$tarball.tmp" "${mirror[@]}" </dev/null
	mv "$tarball.tmp" "$tarball"
fi
# The EROFS is made again whenever pe changed: its writer decides the
# layout (where the metadata lies), which the lazy runs depend on.
stamp=$(sha256sum "$PE" | cut -d' ' -f1)
if [ ! -s "$out" ] || [ "$(cat "$out.pe-sha256" 2>/dev/null)" != "$stamp" ]; then
	echo "bench-lazy-image: $PE image build-erofs $tarball -o $out" >&2
	"$PE" image build-erofs "$tarball" -o "$out.tmp" >&2
	mv "$out.tmp" "$out"
	echo "$stamp" >"$out.pe-sha256"
fi
echo "$out"
