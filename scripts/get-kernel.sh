#!/bin/sh
# get-kernel.sh: install the guest kernel pe boots its micro-VMs with.
#
# Fetches Debian's linux-image-cloud-amd64 (the kernel package it depends on)
# with apt-get download, unpacks it with dpkg-deb and installs into
#   ${PE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/pe}/kernel/
#     vmlinuz    the bzImage
#     modules/   lib/modules/<release>/kernel (the .ko tree pe picks modules from)
#     config     the kernel's build config (tells built-in from module)
#     version    the kernel release, e.g. 6.1.0-56-cloud-amd64
#     package    the Debian package name and version it came from
#
# Idempotent: nothing is fetched when the same package version is installed.
# Atomic: the new tree is built beside the old one and renamed into place, so
# a failed or interrupted run leaves the previous kernel (or none) intact.
#
# Usage: scripts/get-kernel.sh [--force]
set -eu

META=${PE_KERNEL_PACKAGE:-linux-image-cloud-amd64}
DATA=${PE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/pe}
DEST=$DATA/kernel
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

log() { printf 'get-kernel: %s\n' "$*" >&2; }

# The concrete kernel package the meta-package depends on, e.g.
# linux-image-6.1.0-56-cloud-amd64.
kernel_package() {
	apt-cache depends "$META" 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}

PKG=$(kernel_package)
if [ -z "$PKG" ]; then
	log "$META not in the package lists; running apt-get update"
	$SUDO apt-get update -qq
	PKG=$(kernel_package)
fi
[ -n "$PKG" ] || { log "cannot find the kernel package $META depends on"; exit 1; }
PKGVER=$(apt-cache policy "$PKG" | sed -n 's/^ *Candidate: //p')
[ -n "$PKGVER" ] && [ "$PKGVER" != "(none)" ] || { log "no installable version of $PKG"; exit 1; }
WANT="$PKG $PKGVER"

if [ "$FORCE" -eq 0 ] && [ -f "$DEST/package" ] && [ "$(cat "$DEST/package")" = "$WANT" ] &&
	[ -f "$DEST/vmlinuz" ] && [ -d "$DEST/modules" ]; then
	log "$WANT already installed in $DEST"
	exit 0
fi

mkdir -p "$DATA"
# The temporary tree lives in $DATA so the final rename stays on one file system.
TMP=$(mktemp -d "$DATA/.kernel-tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM

log "downloading $PKG=$PKGVER"
# apt-get download writes into the current directory; as root it would drop
# to the _apt user, who cannot reach a directory under /root.
APTOPT=
[ "$(id -u)" -eq 0 ] && APTOPT="-o APT::Sandbox::User=root"
# shellcheck disable=SC2086
(cd "$TMP" && apt-get download -q $APTOPT "$PKG=$PKGVER" >/dev/null)
DEB=$(ls "$TMP"/*.deb)
dpkg-deb -x "$DEB" "$TMP/root"

RELEASE=${PKG#linux-image-}
[ -f "$TMP/root/boot/vmlinuz-$RELEASE" ] || { log "no /boot/vmlinuz-$RELEASE in $DEB"; exit 1; }
[ -d "$TMP/root/lib/modules/$RELEASE/kernel" ] || { log "no /lib/modules/$RELEASE/kernel in $DEB"; exit 1; }

NEW=$TMP/kernel
mkdir "$NEW"
cp "$TMP/root/boot/vmlinuz-$RELEASE" "$NEW/vmlinuz"
cp "$TMP/root/boot/config-$RELEASE" "$NEW/config"
mv "$TMP/root/lib/modules/$RELEASE/kernel" "$NEW/modules"
# modules.builtin lists what needs no loading; kept for reference.
for f in modules.builtin modules.order; do
	[ -f "$TMP/root/lib/modules/$RELEASE/$f" ] && cp "$TMP/root/lib/modules/$RELEASE/$f" "$NEW/$f"
done
printf '%s\n' "$RELEASE" >"$NEW/version"
printf '%s\n' "$WANT" >"$NEW/package"
chmod 0755 "$NEW"

# Swap in: move the old tree aside, rename the new one, drop the old one.
if [ -e "$DEST" ]; then
	mv "$DEST" "$TMP/old"
fi
mv "$NEW" "$DEST"
log "installed $WANT in $DEST"
