#!/usr/bin/env bash
# Where the metadata of an EROFS image lies in 512 KiB chunks (what a lazy
# s3:// run prefetches first), for pe's writer with the metadata first (the
# default for a file output) and at the end (WriterOptions.MetadataAtEnd,
# the layout before issue 16), and for mkfs.erofs; and what moving the data
# costs at build time, on the work directory's file system (ext4 here:
# FALLOC_FL_INSERT_RANGE) and on tmpfs (no INSERT_RANGE: the data is
# copied). Usage: scripts/bench-metadata.sh [TREE]; TREE defaults to the Go
# toolchain (GOROOT) plus /usr/lib/gcc, a few hundred MB.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
work=$(mktemp -d /tmp/pe-bench-meta.XXXXXX)
shm=$(mktemp -d /dev/shm/pe-bench-meta.XXXXXX)
trap 'rm -rf "$work" "$shm"' EXIT

tree=${1:-}
if [ -z "$tree" ]; then
	tree=$work/tree
	mkdir -p "$tree"
	cp -a "$(go env GOROOT)" "$tree/go"
	[ -d /usr/lib/gcc ] && cp -a /usr/lib/gcc "$tree/gcc"
fi
echo "tree: $(find "$tree" | wc -l) entries, $(du -sb "$tree" | cut -f1) bytes"
go build -o "$work/metachunks" ./scripts/metachunks
mkfs.erofs --quiet "$work/mkfs.erofs" "$tree"
echo "## on $(stat -f -c %T "$work") ($work)"
"$work/metachunks" -rounds "$ROUNDS" -build "$tree" -o "$work" "$work/mkfs.erofs"
echo "## on $(stat -f -c %T "$shm") ($shm)"
"$work/metachunks" -rounds "$ROUNDS" -build "$tree" -o "$shm"
