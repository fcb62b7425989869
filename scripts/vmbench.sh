# vmbench.sh, sourced by the benchmark scripts that run VMs (bench-run.sh,
# bench-snapshot.sh) from the repository's root with NAME set to the
# script's name: it checks what they need (bin/pe and bin/pe-init, QEMU, a
# static busybox), makes $tmp (removed on exit) and converts the demo's
# busybox image (same bytes as make demo's, in the same place, so the cache
# keeps one reference) into the cache once, as $IMAGE. It sets N (default
# 7), GO, PE, BUSYBOX, tmp and IMAGE.
N=${N:-7}
GO=${GO:-go}
PE=bin/pe

[ -x "$PE" ] && [ -x bin/pe-init ] || { echo "$NAME: run make build first" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "$NAME: QEMU is missing (make deps)" >&2; exit 1; }
BUSYBOX=$(command -v busybox) || { echo "$NAME: busybox is missing (apt-get install busybox-static)" >&2; exit 1; }

tmp=$(mktemp -d "/tmp/pe-$NAME.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

OCI=${DEMO_OCI:-/tmp/pe-demo-oci}
$GO run ./scripts/mkdemo -busybox "$BUSYBOX" -o "$OCI" >/dev/null
IMAGE="oci:$OCI:demo"
"$PE" run "$IMAGE" true
