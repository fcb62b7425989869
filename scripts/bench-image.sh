#!/usr/bin/env bash
# Converting a multi-layer OCI image to EROFS: pe's streaming conversion
# (`pe image build-erofs oci:DIR`, layers flattened straight into the EROFS
# writer) against "extract the layers into a directory with tar, then
# mkfs.erofs", on the same gzip layers, in one run. Also the time of a second
# `pe image build-erofs` of the image once it is cached.
#
# The image is built here from Debian packages (apt-get download, one layer
# per package, dpkg-deb -x), about 230 MB unpacked in 8 layers, and written
# as an OCI layout by scripts/mkimage. These layers have no whiteouts, so
# plain `tar -x` of each layer in order gives the same tree docker would;
# the script checks that pe's image matches it (diff -r of the loop mounts,
# when run as root).
#
# Usage: scripts/bench-image.sh   (ROUNDS=3 by default; the median is shown)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PACKAGES=${PACKAGES:-"gcc-12 cpp-12 g++-12 libgcc-12-dev libstdc++-12-dev binutils-x86-64-linux-gnu perl-modules-5.36 libperl5.36"}
need() { command -v "$1" >/dev/null || { echo "installing $2" >&2; apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need mkfs.erofs erofs-utils
[ -x /usr/bin/time ] || need /usr/bin/time time

work=$(mktemp -d /tmp/pe-bench-image.XXXXXX)
trap 'umount "$work/mnt-a" "$work/mnt-b" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
go build -o "$work/pe" ./cmd/pe
go build -o "$work/mkimage" ./scripts/mkimage

# One layer per package.
mkdir -p "$work/debs" "$work/layers"
(cd "$work/debs" && apt-get download $PACKAGES >/dev/null 2>&1) || {
	apt-get update -qq && (cd "$work/debs" && apt-get download $PACKAGES >/dev/null)
}
layers=()
for deb in "$work"/debs/*.deb; do
	name=$(basename "$deb" .deb)
	mkdir "$work/layers/$name"
	dpkg-deb -x "$deb" "$work/layers/$name"
	tar -C "$work/layers/$name" --numeric-owner --owner=0 --group=0 -cf "$work/layers/$name.tar" .
	rm -rf "$work/layers/${name:?}"
	layers+=("$work/layers/$name.tar")
done
"$work/mkimage" -o "$work/oci" -tag bench "${layers[@]}"
unpacked=$(cat "${layers[@]}" | wc -c)
compressed=$(du -cb "$work"/oci/blobs/sha256/* | tail -1 | cut -f1)
rm -f "${layers[@]}"
nlayers=${#layers[@]}

# time_it LABEL CMD... appends the wall seconds to $work/LABEL.
time_it() {
	local label=$1
	shift
	sync
	/usr/bin/time -f "%e" -o "$work/time" "$@" >/dev/null
	cat "$work/time" >>"$work/$label"
}
# The reference: every layer extracted with tar (in manifest order, as
# docker applies them), then mkfs.erofs of the tree.
extract_mkfs() {
	rm -rf "$work/tree" "$work/b.erofs"
	mkdir "$work/tree"
	for blob in $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(" ".join(l["digest"].split(":")[1] for l in m["layers"]))' "$work/manifest.json"); do
		tar -C "$work/tree" --numeric-owner -xzpf "$work/oci/blobs/sha256/$blob"
	done
	mkfs.erofs --quiet "$work/b.erofs" "$work/tree"
}
manifest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$work/oci/index.json")
cp "$work/oci/blobs/sha256/$manifest" "$work/manifest.json"
export -f extract_mkfs
export work

for i in $(seq "$ROUNDS"); do
	rm -rf "$work/cache" "$work/a.erofs"
	time_it pe_cold "$work/pe" image build-erofs --cache-dir "$work/cache" "oci:$work/oci:bench" -o "$work/a.erofs"
	time_it ref bash -c extract_mkfs
	rm -rf "$work/tree.mkfs" && mv "$work/tree" "$work/tree.mkfs"
	time_it mkfs_only mkfs.erofs --quiet "$work/c.erofs" "$work/tree.mkfs"
	rm -rf "$work/tree.mkfs" "$work/c.erofs"
done
# The image is cached now: build-erofs copies it.
for i in $(seq "$ROUNDS"); do
	rm -f "$work/a2.erofs"
	time_it pe_warm "$work/pe" image build-erofs --cache-dir "$work/cache" "oci:$work/oci:bench" -o "$work/a2.erofs"
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pe_cold=$(median <"$work/pe_cold")
ref=$(median <"$work/ref")
mkfs_only=$(median <"$work/mkfs_only")
pe_warm=$(median <"$work/pe_warm")
a_size=$(stat -c %s "$work/a.erofs")
extract_mkfs
b_size=$(stat -c %s "$work/b.erofs")

check="not mounted (needs root and loop devices)"
if [ "$(id -u)" = 0 ] && mkdir -p "$work/mnt-a" "$work/mnt-b" &&
	mount -t erofs -o loop,ro "$work/a.erofs" "$work/mnt-a" 2>/dev/null &&
	mount -t erofs -o loop,ro "$work/b.erofs" "$work/mnt-b" 2>/dev/null; then
	if diff -r --no-dereference "$work/mnt-a" "$work/mnt-b" >/dev/null; then
		check="pe's image and mkfs.erofs's have the same tree (diff -r of the loop mounts)"
	else
		check="TREES DIFFER (diff -r of the loop mounts)"
	fi
fi

ver=$(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo '?')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
cat <<EOF
Image: $nlayers layers from Debian packages ($PACKAGES),
$(mib "$unpacked") as tar, $(mib "$compressed") as gzip blobs in an OCI layout. Median of $ROUNDS runs, $(nproc) cores.

| | wall time | image size |
|---|---|---|
| \`pe image build-erofs oci:DIR -o OUT\`, empty cache | ${pe_cold} s | $(mib "$a_size") |
| \`tar -xzf\` of each layer + \`mkfs.erofs\` (erofs-utils $ver) | ${ref} s | $(mib "$b_size") |
| of which \`mkfs.erofs\` alone | ${mkfs_only} s | |
| \`pe image build-erofs\` again, image cached | ${pe_warm} s | $(mib "$a_size") |

Speed-up of pe over extract + mkfs.erofs: $(awk -v a="$ref" -v b="$pe_cold" 'BEGIN {printf "%.2fx", a / b}');
size ratio pe / mkfs.erofs: $(awk -v a="$a_size" -v b="$b_size" 'BEGIN {printf "%.3f", a / b}').
Check: $check.
EOF
