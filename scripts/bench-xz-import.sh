#!/usr/bin/env bash
# Times importing a multi-block .tar.xz, as Compiler Explorer ships its
# compilers, in one run: `pe image build-erofs --tar` decoding with the
# system's xz (the default when xz is on PATH), with the pure-Go decoder
# (PE_XZ=go), and `tar -xJf` + `mkfs.erofs` as the reference; ROUNDS
# alternating repetitions, wall time and peak RSS (GNU time's %M: the
# largest single process, so pe's own, not pe + xz).
# Usage: scripts/bench-xz-import.sh FILE.tar.xz
# Make FILE (kept outside the repository), e.g. 378 MB of /usr/share:
#   tar -cf - -C / usr/share/locale usr/share/doc usr/share/vim |
#     xz -T2 --block-size=8MiB -6 > /tmp/xzbench/share.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=$1
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d /tmp/pe-xzbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/pe" ./cmd/pe
echo "xz: $(xz --version | head -1); $(nproc) cores; $(xz --robot --list "$tarball" | awk '$1=="file"{print $3" blocks, "$4" -> "$5" bytes"}')"

run() { # LABEL CMD...
	local label=$1
	shift
	/usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null
	read -r s kb <"$work/t"
	printf '%-22s %7.1f s %7d MB peak RSS\n' "$label" "$s" $((kb / 1024))
	echo "$s" >>"$work/$label"
	rm -rf "$work/out.erofs" "$work/tree"
}
for _ in $(seq "$ROUNDS"); do
	run pe-system-xz "$work/pe" image build-erofs --tar "$tarball" -o "$work/out.erofs"
	run pe-go-xz env PE_XZ=go "$work/pe" image build-erofs --tar "$tarball" -o "$work/out.erofs"
	run tar+mkfs.erofs sh -c "mkdir $work/tree && tar -xJf '$tarball' -C $work/tree && mkfs.erofs --quiet $work/out.erofs $work/tree"
	run xz-dc-T0-alone sh -c "xz -dc -T0 '$tarball' >/dev/null"
done
median() { sort -n "$work/$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ref=$(median tar+mkfs.erofs)
for l in pe-system-xz pe-go-xz tar+mkfs.erofs xz-dc-T0-alone; do
	m=$(median "$l")
	printf 'median %-22s %7.1f s  reference/this = %.2f×\n' "$l" "$m" "$(echo "$ref / $m" | bc -l)"
done
