#!/bin/sh
# demo.sh: what `make demo` shows once QEMU, the guest kernel, bin/pe and
# bin/pe-init are in place. Builds a small image from Debian's
# busybox-static as an OCI image layout and runs programs from it in VMs.
#
# Usage: scripts/demo.sh [OCI_LAYOUT_DIR]   (default /tmp/pe-demo-oci)
set -eu
cd "$(dirname "$0")/.."
OCI=${1:-/tmp/pe-demo-oci}
GO=${GO:-go}
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# show prints a command, then runs it.
show() {
	printf '+'
	for a in "$@"; do
		case $a in
		*[!A-Za-z0-9_./:=@-]*) printf " '%s'" "$a" ;;
		*) printf ' %s' "$a" ;;
		esac
	done
	printf '\n'
	"$@"
}

tmp=$(mktemp -d /tmp/pe-demo-busybox.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
# apt-get download drops to the _apt user, which must be able to write here.
chmod 0777 "$tmp"
echo "+ apt-get download busybox-static"
if ! (cd "$tmp" && apt-get download -q busybox-static >/dev/null 2>&1); then
	$SUDO apt-get update -qq
	(cd "$tmp" && apt-get download -q busybox-static >/dev/null)
fi
dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/root"

show "$GO" run ./scripts/mkdemo -busybox "$tmp/root/bin/busybox" -o "$OCI"
show bin/pe run "oci:$OCI:demo" sh -c 'echo hello from a pe VM; uname -r'
show bin/pe run -u demo -w /home/demo -e GREETING=hi "oci:$OCI:demo" sh -c 'echo "$GREETING from $(id -un) in $(pwd)"'
show bin/pe run --json --timeout 2s "oci:$OCI:demo" sh -c 'echo tick; sleep 5' || true
show bin/pe image ls
