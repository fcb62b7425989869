#!/bin/sh
# bench-snapshot.sh: `pe run --cold IMAGE true` (a cold boot) against
# `pe run --snapshot DIR true` (a VM restored from a snapshot of the same
# image), N runs each, alternating (default 7), with pe run's default (the
# boot snapshot, made by vmbench.sh's first run) as a third; then the median of each
# phase of the snapshot runs (the restore break-down), the time to create
# the snapshot, and the memory of one QEMU process of each kind while its
# program sleeps (RSS: anonymous and file pages, and PSS).
#
# Needs bin/pe and bin/pe-init (make build), QEMU and the guest kernel
# (make deps), and a static busybox (busybox-static) for the image.
#
# Usage: scripts/bench-snapshot.sh          N=11 scripts/bench-snapshot.sh
set -eu
cd "$(dirname "$0")/.."
NAME=bench-snapshot
. scripts/vmbench.sh

now() { date +%s%N; }
t0=$(now)
"$PE" snapshot create "$IMAGE" -o "$tmp/snap" >/dev/null
t1=$(now)
create_us=$(((t1 - t0) / 1000))

i=0
while [ "$i" -lt "$N" ]; do
	t0=$(now)
	"$PE" run --json --cold "$IMAGE" true >>"$tmp/cold.json"
	t1=$(now)
	"$PE" run --json --snapshot "$tmp/snap" true >>"$tmp/snap.json"
	t2=$(now)
	"$PE" run --json "$IMAGE" true >/dev/null
	t3=$(now)
	echo $(((t1 - t0) / 1000)) >>"$tmp/cold.us"
	echo $(((t2 - t1) / 1000)) >>"$tmp/snap.us"
	echo $(((t3 - t2) / 1000)) >>"$tmp/boot.us"
	i=$((i + 1))
done

# median FILE: the median of the numbers in FILE, one a line.
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }

vmm=$(sed -n '1s/.*"vmm":"\([^"]*\)".*/\1/p' "$tmp/snap.json")
accel=$(sed -n '1s/.*"accel":"\([^"]*\)".*/\1/p' "$tmp/snap.json")
cold_us=$(median "$tmp/cold.us")
snap_us=$(median "$tmp/snap.us")
boot_us=$(median "$tmp/boot.us")
echo
echo "pe run --cold IMAGE true vs pe run --snapshot DIR true ($vmm, $accel; $N runs each, alternating; $(uname -r) host, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| what | median wall time | ratio to the cold run |"
echo "|---|---:|---:|"
echo "| pe run IMAGE true (cold: boot) | $(ms "$cold_us") ms | 1.00 |"
echo "| pe run --snapshot DIR true (restore) | $(ms "$snap_us") ms | $(awk -v a="$snap_us" -v b="$cold_us" 'BEGIN { printf "%.2f", a / b }') |"
echo "| pe run IMAGE true (restores the boot snapshot, for reference) | $(ms "$boot_us") ms | $(awk -v a="$boot_us" -v b="$cold_us" 'BEGIN { printf "%.2f", a / b }') |"
echo "| pe snapshot create IMAGE (once) | $(ms "$create_us") ms | |"
echo
echo "Phases of the snapshot runs (median of each, from --json duration_ms; vm_start/* are the restore's steps, guest_* are measured by the guest)"
echo
echo "| phase | median ms |"
echo "|---|---:|"
sed -n 's/.*"duration_ms":{\([^}]*\)}.*/\1/p' "$tmp/snap.json" | tr ',' '\n' | tr -d '"' |
	while IFS=: read -r k v; do echo "$v" >>"$tmp/phase.$(echo "$k" | tr / _)"; done
for f in "$tmp"/phase.*; do
	k=${f##*/phase.}
	echo "| $k | $(median "$f") |"
done

# Memory: the QEMU process of a run whose program sleeps, sampled every
# 0.2 s; the largest figures of its life. Two restored VMs run at once, so
# that their PSS shows the RAM file's page cache shared between them.
# mem_sample PID OUT: append "rss_anon rss_file pss" (KiB) samples.
mem_sample() {
	while kill -0 "$1" 2>/dev/null; do
		a=$(awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
		f=$(awk '/^RssFile:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
		p=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || true)
		[ -n "$a" ] && [ -n "$p" ] && echo "$a $f $p" >>"$2"
		sleep 0.2
	done
}
# mem_run OUT ARGS...: pe run ARGS in the background; sample its QEMU (the
# one that boots a kernel, not `qemu --version`).
mem_run() {
	out=$1
	shift
	"$PE" run "$@" >/dev/null &
	pe_pid=$!
	q=""
	while [ -z "$q" ] && kill -0 "$pe_pid" 2>/dev/null; do
		q=$(pgrep -P "$pe_pid" -f 'qemu-system.* -kernel ' || true)
		sleep 0.05
	done
	[ -n "$q" ] && mem_sample "$q" "$out"
	wait "$pe_pid"
}
mem_run "$tmp/mem.cold" --cold "$IMAGE" sh -c 'sleep 3'
mem_run "$tmp/mem.boot" "$IMAGE" sh -c 'sleep 3'
mem_run "$tmp/mem.snap1" --snapshot "$tmp/snap" sh -c 'sleep 3' &
mem_run "$tmp/mem.snap2" --snapshot "$tmp/snap" sh -c 'sleep 3'
wait
# peak FILE COLUMN: the largest value of a column, in MiB.
peak() { awk -v c="$2" '$c > m { m = $c } END { printf "%.0f", m / 1024 }' "$1"; }
echo
echo "Memory of one QEMU process (peak of samples while the program sleeps; MiB)"
echo
echo "| VM | RssAnon | RssFile | PSS |"
echo "|---|---:|---:|---:|"
echo "| cold boot | $(peak "$tmp/mem.cold" 1) | $(peak "$tmp/mem.cold" 2) | $(peak "$tmp/mem.cold" 3) |"
echo "| restored from the boot snapshot | $(peak "$tmp/mem.boot" 1) | $(peak "$tmp/mem.boot" 2) | $(peak "$tmp/mem.boot" 3) |"
echo "| restored (1 of 2 at once) | $(peak "$tmp/mem.snap1" 1) | $(peak "$tmp/mem.snap1" 2) | $(peak "$tmp/mem.snap1" 3) |"
echo "| restored (2 of 2 at once) | $(peak "$tmp/mem.snap2" 1) | $(peak "$tmp/mem.snap2" 2) | $(peak "$tmp/mem.snap2" 3) |"
echo
echo "Snapshot directory: $(du -sh --apparent-size "$tmp/snap" | cut -f1) apparent, $(du -sh "$tmp/snap" | cut -f1) on disk"
