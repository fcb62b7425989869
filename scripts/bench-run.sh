#!/bin/sh
# bench-run.sh: the cost of one `pe run IMAGE true` on a cached image against
# the floor, a bare QEMU boot of the same kernel, with the same machine and
# flags as pe's, whose init (scripts/benchfloor/floorinit, the smallest Go
# init) powers the VM off at once. pe run is timed twice: as it runs by
# default (restored from its boot snapshot, which the script's first,
# untimed run makes) and with --cold (booted). Runs alternate between the
# three, N each (default 7); the script prints medians as markdown tables,
# then the median of each phase pe run --json reports, for both.
#
# Needs bin/pe and bin/pe-init (make build), QEMU and the guest kernel
# (make deps), and a static busybox (busybox-static) for the image.
#
# Usage: scripts/bench-run.sh          N=11 scripts/bench-run.sh
#        ACCEL=kvm scripts/bench-run.sh   (default: whatever pe run --accel auto picks)
set -eu
cd "$(dirname "$0")/.."
KDIR=${PE_KERNEL:-${PE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/pe}/kernel}
[ -f "$KDIR/vmlinuz" ] || { echo "bench-run: no guest kernel in $KDIR (make kernel)" >&2; exit 1; }
NAME=bench-run
. scripts/vmbench.sh

# Which VMM and acceleration pe uses; the floor boots the same way.
choice=$("$PE" run --json ${ACCEL:+--accel "$ACCEL"} "$IMAGE" true)
vmm=$(printf '%s' "$choice" | sed -n 's/.*"vmm":"\([^"]*\)".*/\1/p')
accel=$(printf '%s' "$choice" | sed -n 's/.*"accel":"\([^"]*\)".*/\1/p')
[ "$vmm" = qemu ] || { echo "bench-run: pe chose $vmm; the floor is a QEMU boot (use --vmm qemu hosts)" >&2; exit 1; }

# The kernel file pe boots (the PVH kernel it extracted from vmlinuz).
KERNEL=$("$PE" doctor --json --accel "$accel" | sed -n 's/^  "kernel_image": "\(.*\)",$/\1/p')
[ -n "$KERNEL" ] || KERNEL=$KDIR/vmlinuz

CGO_ENABLED=0 $GO build -ldflags='-s -w' -o "$tmp/floorinit" ./scripts/benchfloor/floorinit
$GO run ./scripts/benchfloor -init "$tmp/floorinit" -o "$tmp/floor.cpio"

# The floor's QEMU command: vmm/qemu's Args for the same config.
if [ "$accel" = kvm ]; then
	qaccel="-accel kvm -cpu host"
	extra=""
else
	qaccel="-accel tcg -cpu max"
	khz=$(cat /sys/devices/system/cpu/cpu0/tsc_freq_khz 2>/dev/null ||
		awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000 + 0.5; exit }' /proc/cpuinfo)
	extra="${khz:+tsc_early_khz=$khz tsc=reliable }"
fi
floor() {
	# shellcheck disable=SC2086
	qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=on $qaccel -smp 1 -m 512M \
		-nodefaults -no-user-config -nographic -no-reboot \
		-kernel "$KERNEL" -initrd "$tmp/floor.cpio" \
		-append "console=ttyS0 reboot=t ${extra}quiet panic=-1" \
		-chardev stdio,id=console,signal=off -serial chardev:console </dev/null >"$tmp/floor.out" 2>&1
}

now() { date +%s%N; }
i=0
while [ "$i" -lt "$N" ]; do
	t0=$(now)
	floor
	t1=$(now)
	"$PE" run --json ${ACCEL:+--accel "$ACCEL"} "$IMAGE" true >>"$tmp/pe.json"
	t2=$(now)
	"$PE" run --json --cold ${ACCEL:+--accel "$ACCEL"} "$IMAGE" true >>"$tmp/cold.json"
	t3=$(now)
	echo $(((t1 - t0) / 1000)) >>"$tmp/floor.us"
	echo $(((t2 - t1) / 1000)) >>"$tmp/pe.us"
	echo $(((t3 - t2) / 1000)) >>"$tmp/cold.us"
	i=$((i + 1))
done

# median FILE: the median of the numbers in FILE, one a line.
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }

floor_us=$(median "$tmp/floor.us")
ratio() { awk -v a="$1" -v b="$floor_us" 'BEGIN { printf "%.2f", a / b }'; }
pe_us=$(median "$tmp/pe.us")
cold_us=$(median "$tmp/cold.us")
echo
echo "pe run $IMAGE true vs a bare QEMU boot of $KERNEL ($vmm, $accel; $N runs each, alternating; $(uname -r) host, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| what | median wall time | ratio to the floor |"
echo "|---|---:|---:|"
echo "| floor: QEMU boots the kernel, init powers off | $(ms "$floor_us") ms | 1.00 |"
echo "| pe run IMAGE true (whole command; restored from the boot snapshot) | $(ms "$pe_us") ms | $(ratio "$pe_us") |"
echo "| pe run --cold IMAGE true (whole command; booted) | $(ms "$cold_us") ms | $(ratio "$cold_us") |"

# phases FILE: the median of each phase in FILE's pe run --json lines.
phases() {
	rm -f "$tmp"/phase.*
	# Each line has "duration_ms":{"k":v,...}: one file per key.
	sed -n 's/.*"duration_ms":{\([^}]*\)}.*/\1/p' "$1" | tr ',' '\n' | tr -d '"' | tr / . |
		while IFS=: read -r k v; do echo "$v" >>"$tmp/phase.$k"; done
	echo "| phase | median ms |"
	echo "|---|---:|"
	for k in image choose_vmm queue initramfs io_file vm_start vm guest_boot_to_init guest_modules guest_request guest_mounts guest_program guest_collect result total; do
		[ -f "$tmp/phase.$k" ] && echo "| $k | $(median "$tmp/phase.$k") |"
	done
	for f in "$tmp"/phase.*; do
		k=${f##*/phase.}
		case " image choose_vmm queue initramfs io_file vm_start vm guest_boot_to_init guest_modules guest_request guest_mounts guest_program guest_collect result total " in
		*" $k "*) ;;
		*) echo "| $k | $(median "$f") |" ;;
		esac
	done
}
echo
echo "Phases of pe run, restored (median of each, from --json duration_ms; guest_* are measured by the guest)"
echo
phases "$tmp/pe.json"
echo
echo "Phases of pe run --cold"
echo
phases "$tmp/cold.json"
