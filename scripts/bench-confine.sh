#!/bin/sh
# bench-confine.sh: the cost of confining QEMU (docs/security.md): each of
# `pe run IMAGE true` (restores the boot snapshot), `pe run --cold IMAGE
# true` (boots) and `pe run --snapshot DIR true` (restores an image's
# snapshot), confined (the default) and with PE_QEMU_CONFINE=0, N runs of
# each, alternating; medians of the whole commands' wall time, and the peak
# memory of a restored QEMU process of each kind.
#
# Run it as root (unprivileged pe only gets QEMU's seccomp sandbox).
# Needs bin/pe and bin/pe-init (make build), QEMU and the guest kernel
# (make deps), and a static busybox (busybox-static) for the image.
#
# Usage: scripts/bench-confine.sh          N=9 scripts/bench-confine.sh
set -eu
cd "$(dirname "$0")/.."
NAME=bench-confine
. scripts/vmbench.sh

now() { date +%s%N; }
"$PE" snapshot create "$IMAGE" -o "$tmp/snap" >/dev/null
PE_QEMU_CONFINE=0 "$PE" run "$IMAGE" true

# one KIND MODE ARGS...: time one pe run, appending microseconds to
# $tmp/KIND.MODE.
one() {
	kind=$1 mode=$2
	shift 2
	t0=$(now)
	if [ "$mode" = off ]; then
		PE_QEMU_CONFINE=0 "$PE" run "$@" >/dev/null
	else
		"$PE" run "$@" >/dev/null
	fi
	t1=$(now)
	echo $(((t1 - t0) / 1000)) >>"$tmp/$kind.$mode"
}

i=0
while [ "$i" -lt "$N" ]; do
	for mode in on off; do
		one boot "$mode" "$IMAGE" true
		one cold "$mode" --cold "$IMAGE" true
		one snap "$mode" --snapshot "$tmp/snap" true
	done
	i=$((i + 1))
done

median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }

# peak KIND MODE ARGS...: the peak RssAnon+RssShmem, RssFile and PSS (MiB)
# of the QEMU process of a run of sh -c 'sleep 3'.
peak() {
	kind=$1 mode=$2
	shift 2
	if [ "$mode" = off ]; then
		PE_QEMU_CONFINE=0 "$PE" run "$@" sh -c 'sleep 3' >/dev/null &
	else
		"$PE" run "$@" sh -c 'sleep 3' >/dev/null &
	fi
	run=$!
	pid=
	while [ -z "$pid" ] && kill -0 "$run" 2>/dev/null; do
		pid=$(pgrep -n -f qemu-system-x86_64 || true)
		sleep 0.05
	done
	: >"$tmp/mem"
	while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
		awk '/^RssAnon:|^RssShmem:/ { a += $2 } /^RssFile:/ { f = $2 } END { printf "%d %d ", a, f }' "/proc/$pid/status" 2>/dev/null >>"$tmp/mem" || true
		awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null >>"$tmp/mem" || echo >>"$tmp/mem"
		sleep 0.2
	done
	wait "$run"
	awk 'NF == 3 { if ($1 > a) a = $1; if ($2 > f) f = $2; if ($3 > p) p = $3 } END { printf "%d / %d / %d", a / 1024, f / 1024, p / 1024 }' "$tmp/mem"
}

echo
echo "QEMU confined vs not ($N runs each, alternating; $(uname -r) host, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $(id -un))"
echo
echo "| run | confined | PE_QEMU_CONFINE=0 | difference | peak MiB anon+shmem / file / PSS, confined | not |"
echo "|---|---:|---:|---:|---:|---:|"
for kind in boot cold snap; do
	case $kind in
	boot) what='`pe run IMAGE true` (boot snapshot)' args="$IMAGE" ;;
	cold) what='`pe run --cold IMAGE true`' args="--cold $IMAGE" ;;
	snap) what='`pe run --snapshot DIR true`' args="--snapshot $tmp/snap" ;;
	esac
	on=$(median "$tmp/$kind.on")
	off=$(median "$tmp/$kind.off")
	# shellcheck disable=SC2086 # args are words
	mon=$(peak "$kind" on $args)
	# shellcheck disable=SC2086
	moff=$(peak "$kind" off $args)
	echo "| $what | $(ms "$on") ms | $(ms "$off") ms | $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%+.0f ms (%+.1f%%)", (a - b) / 1000, 100 * (a - b) / b }') | $mon | $moff |"
done
