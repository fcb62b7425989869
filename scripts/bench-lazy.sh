#!/usr/bin/env bash
# bench-lazy.sh: issue 16's figures. A ~1.5 GB compiler image (Debian's
# gcc, clang, llvm, gdb: scripts/bench-lazy-image.sh builds it once) is
# pushed to a versitygw bucket that sits behind scripts/s3delay (DELAY per
# request, one link of RATE bytes/s shared by all connections, as a distant
# store), and `gcc -c hello.c && echo ok` is run from it five ways:
#
#   a  local:  pe run IMAGE.erofs ...                       (fresh cache, after
#              one untimed run of the same)
#   b  whole:  pe image pull s3://... + pe run s3://...     (fresh cache; the sum)
#   c  cold:   pe run s3://... with no prefetch trace       (fresh cache)
#   d  trace:  pe run s3://... after a run on another cache recorded its
#              trace in the bucket                          (fresh cache)
#   e  warm:   pe run s3://... again on d's cache (after one untimed run
#              of the same, as a)
#
# ROUNDS rounds (default 3); the medians are shown. In each round b, c and
# d run in that order, then a and e in turns (a first in odd rounds). Every
# timed leg but b and c follows a warm run of the same command (d: an
# untimed a), never a cold one: on a host that takes freed memory back
# (free page reporting), the run after a cold one pays for the memory the
# cold run freed (docs/benchmarks.md). The time is from the pe command's start to the first byte of its
# output (pe run prints the program's output when the VM ends; its exit
# comes after, once the chunk cache's writes are flushed): the issue's
# "time to first output". Every leg's cache is a copy
# of one prepared beforehand (kernel, initramfs, boot snapshot: a
# `pe run IMAGE.erofs true`), so that no leg pays for the boot snapshot, and
# none holds any part of the image. Before each c leg, every object the
# bucket gained since the push (a trace, whatever its key) is removed from
# versitygw's directory, so that c runs without a trace.
#
# Bytes fetched are counted twice: by the proxy (every response body byte
# it sent during the leg, and its GETs) and, where pe run --json reports it,
# by pe (the first "bytes_fetched" in the JSON, e.g. its blockstore
# figures; n/a when absent).
#
# BIG=1 checks a ~5 GB image instead (random, incompressible files plus
# busybox, built once into $BENCH_CACHE/big-5g.erofs): pushed, then
# `pe run s3://... cat /small/hello.txt` on a fresh cache must print the file
# and fetch a few MB only (the proxy's bytes are shown against the image's
# size).
#
# Needs root for the image build (mmdebstrap), bin/pe and bin/pe-init (make
# build), QEMU and the guest kernel (make deps), versitygw (make deps-s3),
# curl, python3, and for BIG=1 busybox-static and ~20 GB of free disk.
#
# Usage: scripts/bench-lazy.sh                   ROUNDS=5 scripts/bench-lazy.sh
#        DELAY=30ms RATE=125000000 scripts/bench-lazy.sh
#        BIG=1 scripts/bench-lazy.sh
#        BENCH_CACHE=DIR (default /work/bench-cache): where the images are kept
#        KEEP=1: keep the work directory (bucket, caches, JSON of every run)
#        RUN_FLAGS="...": more pe run flags for every run (e.g. --accel tcg)
#        LAZY_FLAGS="...": more pe run flags for the lazy runs (c, d, e, BIG)
#        PUSH_FLAGS="...": pe image push flags (e.g. --chunk-compression none,
#          to measure lazy runs of the raw image)
#        LEGS=ade: run only these legs (default abcde; e needs d)
#        SETTLE=N: before each timed leg, sync and wait N seconds (default
#          0: none). On a VM whose host takes freed memory back (free page
#          reporting) the pause slows every leg, a most (docs/benchmarks.md).
#        STORE=files: legs d and e (and e's untimed run) read the bucket
#          through `s3delay -files`, which serves versitygw's directory
#          itself (GET and HEAD, no signature checked) behind the same
#          delay and link: a store whose own CPU is not this machine's.
#          The push, leg c and d's first run (which records the trace)
#          still go to versitygw. Default: versitygw for every leg.
#        STORE_SCHED=idle|nice: how versitygw and the proxy are scheduled.
#          They stand in for a distant store, but run on this machine,
#          where their CPU (about 0.3 s per cold run on 2 cores) is not a
#          real store's. idle (the default): SCHED_IDLE, which runs them
#          only on CPU time nothing else wants, and makes the kernel count
#          a core that runs only them as idle, so that QEMU's threads wake
#          there instead of preempting the guest's vCPU. nice: at
#          STORE_NICE (default 19), as the figures before 2026-12-07 were
#          measured; a nice-19 task still keeps its core busy, and its
#          wake-ups still land on the vCPU's core (docs/benchmarks.md);
#          STORE_NICE=0 gives the store the VM's own priority.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DELAY=${DELAY:-30ms}
RATE=${RATE:-125000000}
RUN_FLAGS=${RUN_FLAGS:-}
LAZY_FLAGS=${LAZY_FLAGS:-}
PUSH_FLAGS=${PUSH_FLAGS:-}
LEGS=${LEGS:-abcde}
STORE_NICE=${STORE_NICE:-19}
STORE_SCHED=${STORE_SCHED:-idle}
case $STORE_SCHED in
nice) store=(nice -n "$STORE_NICE") ;;
idle) store=(chrt -i 0) ;;
*) echo "bench-lazy: STORE_SCHED=$STORE_SCHED: want nice or idle" >&2; exit 2 ;;
esac
STORE=${STORE:-versitygw}
case $STORE in versitygw | files) ;; *) echo "bench-lazy: STORE=$STORE: want versitygw or files" >&2; exit 2 ;; esac
SETTLE=${SETTLE:-0}
# want LEG: whether LEGS has LEG.
want() { case $LEGS in *"$1"*) return 0 ;; esac; return 1; }
GO=${GO:-go}
PE=$PWD/bin/pe
export BENCH_CACHE=${BENCH_CACHE:-/work/bench-cache}
AK=AKIDPEBENCH
SK=pe-bench-secret-key

[ -x "$PE" ] && [ -x bin/pe-init ] || { echo "bench-lazy: run make build first" >&2; exit 1; }
for c in versitygw curl python3 qemu-system-x86_64; do
	command -v "$c" >/dev/null || { echo "bench-lazy: $c is missing (make deps deps-s3)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pe-bench-lazy.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
ms_since() { echo $((($(now) - $1) / 1000000)); }
freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The images (built once, kept in $BENCH_CACHE).
if [ -n "${BIG:-}" ]; then
	IMAGE=$BENCH_CACHE/big-5g.erofs
	if [ ! -s "$IMAGE" ]; then
		BUSYBOX=$(command -v busybox) || { echo "bench-lazy: busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
		mkdir -p "$BENCH_CACHE"
		tree=$BENCH_CACHE/big-5g.tree
		rm -rf "$tree" && mkdir -p "$tree/bin" "$tree/big" "$tree/small"
		cp "$BUSYBOX" "$tree/bin/busybox"
		for a in sh cat ls wc true; do ln -s busybox "$tree/bin/$a"; done
		echo "hello from a 5 GB image" >"$tree/small/hello.txt"
		echo "bench-lazy: writing 20 random files of 256 MiB into $tree" >&2
		for i in $(seq -w 0 19); do head -c 256M /dev/urandom >"$tree/big/r$i"; done
		"$PE" image build-erofs "$tree" -o "$IMAGE.tmp" >&2
		mv "$IMAGE.tmp" "$IMAGE"
		rm -rf "$tree"
	fi
else
	IMAGE=$(scripts/bench-lazy-image.sh "$PE")
fi
image_size=$(stat -c %s "$IMAGE")

# versitygw on a temporary directory, the delaying proxy in front.
gwdir=$work/gw
mkdir -p "$gwdir"
gwport=$(freeport)
GW=http://127.0.0.1:$gwport
"${store[@]}" versitygw --access "$AK" --secret "$SK" --port "127.0.0.1:$gwport" posix "$gwdir" >"$work/versitygw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "$GW/" && break; sleep 0.1; done
curl -sf -o /dev/null -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" -X PUT "$GW/bench" ||
	{ echo "bench-lazy: creating the bucket failed" >&2; cat "$work/versitygw.log" >&2; exit 1; }
$GO build -o "$work/s3delay" ./scripts/s3delay
"${store[@]}" "$work/s3delay" -target "$GW" -delay "$DELAY" -rate "$RATE" -log "$work/proxy.log" >"$work/proxy.addr" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/proxy.addr" ] && break; sleep 0.1; done
touch "$work/proxy.log"
PROXY=http://$(head -1 "$work/proxy.addr")
# LAZY_EP: the endpoint of legs d and e.
LAZY_EP=$PROXY
if [ "$STORE" = files ]; then
	"${store[@]}" "$work/s3delay" -files "$gwdir" -delay "$DELAY" -rate "$RATE" -log "$work/proxy.log" >"$work/files.addr" &
	pids+=($!)
	for _ in $(seq 100); do [ -s "$work/files.addr" ] && break; sleep 0.1; done
	LAZY_EP=http://$(head -1 "$work/files.addr")
fi

none=$work/no-aws-config
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=us-east-1 AWS_PROFILE='' \
	AWS_CONFIG_FILE=$none AWS_SHARED_CREDENTIALS_FILE=$none AWS_SESSION_TOKEN='' AWS_ENDPOINT_URL_S3=''
unset AWS_DEFAULT_REGION

if [ -n "${BIG:-}" ]; then
	REF=s3://bench/big/five:1
else
	REF=s3://bench/ce/gcc:12
fi
# The push goes straight to versitygw: it is not what is measured.
t0=$(now)
# shellcheck disable=SC2086
XDG_CACHE_HOME=$work/push-cache AWS_ENDPOINT_URL=$GW "$PE" image push $PUSH_FLAGS "$IMAGE" "$REF" >"$work/digest"
push_ms=$(ms_since "$t0")
export AWS_ENDPOINT_URL=$PROXY
(cd "$gwdir/bench" && find . -type f | sort) >"$work/pushed.list"

# The prepared cache every leg's cache copies: kernel, initramfs, boot
# snapshot, made by a run of the local image.
# shellcheck disable=SC2086
XDG_CACHE_HOME=$work/template "$PE" run $RUN_FLAGS "$IMAGE" true
rm -rf "$work/template/pe/blobs" "$work/template/pe/images" "$work/template/pe/refs"
n=0
# fresh: sets FRESH to a new cache directory (for XDG_CACHE_HOME), the
# template's copy, in which a run of the local image has been made: some of
# what pe caches is keyed by paths inside the cache (the KVM probe's
# verdict names the kernel it extracted there), and would cost the timed
# run seconds otherwise.
fresh() {
	n=$((n + 1))
	FRESH=$work/caches/c$n
	mkdir -p "$FRESH"
	cp -a "$work/template/pe" "$FRESH/pe"
	# shellcheck disable=SC2086
	XDG_CACHE_HOME=$FRESH "$PE" run $RUN_FLAGS "$IMAGE" true
}
# prune: remove what the bucket gained since the push (traces).
prune() {
	(cd "$gwdir/bench" && find . -type f -not -path './.sgwtmp/*' | sort) |
		comm -13 "$work/pushed.list" - | while read -r f; do rm -f "$gwdir/bench/$f"; done
}
# proxy_mark: the proxy log's line count now; proxy_since MARK: "GETS BYTES"
# of the GETs it answered since (bytes printed with %.0f: mawk's %d stops
# at 2^31).
proxy_mark() { wc -l <"$work/proxy.log"; }
proxy_since() {
	tail -n +$(($1 + 1)) "$work/proxy.log" | awk '$1 == "GET" { g++; b += $5 } END { printf "%d %.0f\n", g, b }'
}
# timed LEG CACHE ARGS...: runs pe ARGS with XDG_CACHE_HOME=CACHE, appends
# the ms from its start to its first byte of output (its exit, when it
# prints nothing) to $work/LEG.ms, the ms to its exit to LEG.exitms, the
# proxy's GETs and bytes to LEG.proxy and the output to LEG.out.
timed() {
	local leg=$1 cache=$2 m t0
	shift 2
	if [ "$SETTLE" != 0 ]; then
		sync
		sleep "$SETTLE"
	fi
	m=$(proxy_mark)
	t0=$(now)
	set +o pipefail
	XDG_CACHE_HOME=$cache "$PE" "$@" | python3 -c "$firstbyte" "$work/first.ns" >"$work/last.out"
	local status=${PIPESTATUS[0]}
	set -o pipefail
	[ "$status" = 0 ] || { echo "bench-lazy: leg $leg: pe $* failed" >&2; cat "$work/last.out" >&2; exit 1; }
	ms_since "$t0" >>"$work/$leg.exitms"
	echo $((($(cat "$work/first.ns") - t0) / 1000000)) >>"$work/$leg.ms"
	proxy_since "$m" >>"$work/$leg.proxy"
	cat "$work/last.out" >>"$work/$leg.out"
	echo >>"$work/$leg.out"
}
# firstbyte FILE (python): copies stdin to stdout and writes to FILE the
# time (ns, the clock of date +%s%N) its first byte arrived, or its end.
firstbyte='
import sys, time
b = sys.stdin.buffer.read(1)
open(sys.argv[1], "w").write(str(time.time_ns()))
sys.stdout.buffer.write(b + sys.stdin.buffer.read())
'
# check_out LEG TEXT: the last run (of LEG) exited 0 and printed TEXT.
check_out() {
	python3 - "$work/last.out" "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("exit_code") != 0 or sys.argv[3] not in r.get("stdout", ""):
    sys.exit("bench-lazy: leg %s: exit %s, stdout %r, stderr %r" % (sys.argv[2], r.get("exit_code"), r.get("stdout"), r.get("stderr", "")[-2000:]))
EOF
}
# pe_bytes FILE: the first "bytes_fetched" in each JSON object of FILE
# (one a line), or n/a.
pe_bytes() {
	python3 - "$1" <<'EOF'
import json, sys
def find(v):
    if isinstance(v, dict):
        if isinstance(v.get("bytes_fetched"), (int, float)):
            return v
        for x in v.values():
            f = find(x)
            if f is not None:
                return f
    elif isinstance(v, list):
        for x in v:
            f = find(x)
            if f is not None:
                return f
    return None
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        continue
    try:
        f = find(json.loads(line))
    except ValueError:
        f = None
    print("n/a n/a" if f is None else "%d %s" % (f["bytes_fetched"], f.get("gets", "n/a")))
EOF
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
pct() { awk -v b="$1" -v s="$image_size" 'BEGIN { printf "%.1f %%", 100 * b / s }'; }

if [ -n "${BIG:-}" ]; then
	fresh
	c=$FRESH
	# shellcheck disable=SC2086
	timed big "$c" run --json $RUN_FLAGS $LAZY_FLAGS "$REF" cat /small/hello.txt
	check_out big "hello from a 5 GB image"
	read -r gets bytes <"$work/big.proxy"
	read -r pebytes pegets < <(pe_bytes "$work/big.out")
	ms=$(cat "$work/big.ms")
	verdict=FAIL
	[ "$bytes" -lt $((64 << 20)) ] && verdict=ok
	cat <<EOF

5 GB image check: $(mib "$image_size") EROFS ($IMAGE), pushed as $REF in $((push_ms / 1000)) s;
served by versitygw behind s3delay ($DELAY per request, $RATE bytes/s shared link).

\`pe run $REF cat /small/hello.txt\` on an empty cache: $ms ms, printed the file.
Fetched through the proxy: $gets GETs, $(mib "$bytes") ($(pct "$bytes") of the image); pe --json bytes_fetched: $pebytes, gets: $pegets.
Few MB only (< 64 MiB fetched): $verdict
EOF
	exit 0
fi

mkdir -p "$work/in"
printf '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n' >"$work/in/hello.c"
# shellcheck disable=SC2206
RUN=(run --json --input "$work/in" $RUN_FLAGS)
# shellcheck disable=SC2206
LAZY=($LAZY_FLAGS)
CMD=(sh -c 'cd /run/pe/input && gcc -c -o /tmp/hello.o hello.c && echo ok')
# untimed CACHE ARGS...: the benchmark's command from ARGS (an image
# reference, with flags before it) on CACHE, untimed, its output dropped.
untimed() {
	local cache=$1
	shift
	XDG_CACHE_HOME=$cache "$PE" "${RUN[@]}" "$@" "${CMD[@]}" >/dev/null
}

for r in $(seq "$ROUNDS"); do
	echo "bench-lazy: round $r of $ROUNDS" >&2
	AWS_ENDPOINT_URL=$PROXY # legs d and e set $LAZY_EP
	if want a; then
		fresh
		A=$FRESH
		# Leg a's first run on its cache, untimed: the timed one, like
		# e, reads what a run before it read, and finds it in the
		# host's page cache as that run left it.
		untimed "$A" "$IMAGE"
	fi

	if want b; then
		fresh
		c=$FRESH
		timed b_pull "$c" image pull "$REF"
		timed b_run "$c" "${RUN[@]}" "$REF" "${CMD[@]}"
		check_out b ok
		echo $(($(tail -1 "$work/b_pull.ms") + $(tail -1 "$work/b_run.ms"))) >>"$work/b.ms"
		paste -d' ' <(tail -1 "$work/b_pull.proxy") <(tail -1 "$work/b_run.proxy") | awk '{ printf "%d %.0f\n", $1 + $3, $2 + $4 }' >>"$work/b.proxy"
	fi

	if want c; then
		prune
		fresh
		c=$FRESH
		timed c "$c" "${RUN[@]}" "${LAZY[@]}" "$REF" "${CMD[@]}"
		check_out c ok
	fi

	pair=()
	want a && pair+=(a)
	if want d; then
		# d: a first run on another cache records the trace in the bucket.
		fresh
		p=$FRESH
		timed d_prime "$p" "${RUN[@]}" "${LAZY[@]}" "$REF" "${CMD[@]}"
		check_out d_prime ok
		fresh
		D=$FRESH
		# Like every timed leg, d follows a warm run of the command, not
		# the cold run above (whose freed memory and written chunks the
		# next run pays for on a host with free page reporting).
		want a && untimed "$A" "$IMAGE"
		AWS_ENDPOINT_URL=$LAZY_EP
		timed d "$D" "${RUN[@]}" "${LAZY[@]}" "$REF" "${CMD[@]}"
		check_out d ok

		if want e; then
			# Leg e's first warm run on d's cache, untimed, as leg a's.
			untimed "$D" "${LAZY[@]}" "$REF"
			pair+=(e)
		fi
	fi
	# a and e in turns, a first in odd rounds: each follows a warm run,
	# and neither always the same one.
	if [ $((r % 2)) = 0 ] && [ ${#pair[@]} = 2 ]; then
		pair=(e a)
	fi
	for leg in "${pair[@]}"; do
		case $leg in
		a) timed a "$A" "${RUN[@]}" "$IMAGE" "${CMD[@]}" ;;
		e)
			AWS_ENDPOINT_URL=$LAZY_EP
			timed e "$D" "${RUN[@]}" "${LAZY[@]}" "$REF" "${CMD[@]}"
			;;
		esac
		check_out "$leg" ok
	done
	rm -rf "$work/caches"
done

# phase FILE KEY: the duration_ms KEY of each JSON object of FILE.
phase() {
	python3 - "$1" "$2" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        print(json.loads(line).get("duration_ms", {}).get(sys.argv[2], "n/a"))
EOF
}
for leg in a b c d e; do
	[ -f "$work/$leg.ms" ] || continue
	median <"$work/$leg.ms" >"$work/$leg.med"
	sort -n "$work/$leg.ms" | head -1 >"$work/$leg.min"
	awk '{ print $1 }' "$work/$leg.proxy" 2>/dev/null | median >"$work/$leg.gets"
	awk '{ print $2 }' "$work/$leg.proxy" 2>/dev/null | median >"$work/$leg.bytes"
	if [ -f "$work/$leg.out" ]; then
		pe_bytes "$work/$leg.out" | awk '{ print $1 }' | grep -v n/a | median >"$work/$leg.pebytes" || echo n/a >"$work/$leg.pebytes"
	else
		echo n/a >"$work/$leg.pebytes"
	fi
done
med() { cat "$work/$1.med"; }
row() {
	local leg=$1 what=$2 bytes pb
	[ -f "$work/$leg.ms" ] || return 0
	bytes=$(cat "$work/$leg.bytes")
	pb=$(cat "$work/$leg.pebytes")
	[ "$pb" = n/a ] || pb="$(mib "$pb") ($(pct "$pb"))"
	local out=$work/$leg.out
	[ "$leg" = b ] && out=$work/b_run.out
	echo "| $leg | $what | $(med "$leg") ms | $(cat "$work/$leg.min") ms | $(phase "$out" image | median | awk '{ printf "%.0f", $1 }') ms | $(cat "$work/$leg.gets") | $(mib "$bytes") ($(pct "$bytes")) | $pb |"
}
# ratio A B LIMIT: A's median over B's against LIMIT, then the ratio in
# each round (legs of one round ran a minute apart: on a shared machine
# their ratio varies less than the medians do) and its median.
ratio() {
	[ -f "$work/$1.ms" ] && [ -f "$work/$2.ms" ] || { echo "n/a (legs not run)"; return; }
	awk -v a="$(med "$1")" -v b="$(med "$2")" -v lim="$3" 'BEGIN { r = a / b; printf "%.2f (target ≤ %s: %s)", r, lim, (r <= lim ? "met" : "NOT met") }'
	paste -d' ' "$work/$1.ms" "$work/$2.ms" | awk '{ printf "%.2f\n", $1 / $2 }' >"$work/ratio"
	printf '; per round %s, their median %s' "$(tr '\n' ' ' <"$work/ratio" | sed 's/ $//')" \
		"$(sort -n "$work/ratio" | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
}
bytes_ok() {
	[ -f "$work/$1.bytes" ] || { echo "n/a (leg not run)"; return; }
	awk -v b="$(cat "$work/$1.bytes")" -v s="$image_size" 'BEGIN { printf "%.1f %% (target < 10 %%: %s)", 100 * b / s, (b < 0.1 * s ? "met" : "NOT met") }'
}

cat <<EOF

Image: $(mib "$image_size") EROFS ($IMAGE), pushed as $REF in $((push_ms / 1000)) s (pe image push ${PUSH_FLAGS:-with no flags}).
S3: $([ "$STORE" = files ] && echo "legs d and e: versitygw's directory served by scripts/s3delay -files; the rest: ")versitygw behind scripts/s3delay: $DELAY per request, response bodies over one $RATE bytes/s link shared by all connections; both $([ "$STORE_SCHED" = idle ] && echo "under SCHED_IDLE" || echo "at nice $STORE_NICE").
Command: pe run --json --input DIR${RUN_FLAGS:+ $RUN_FLAGS} IMAGE sh -c 'cd /run/pe/input && gcc -c -o /tmp/hello.o hello.c && echo ok'
Median of $ROUNDS rounds; time from the pe command's start to its first byte of output (pe run prints the program's output when the VM ends); each leg on a fresh cache holding the boot snapshot.$([ "$SETTLE" = 0 ] || echo " Each timed leg after sync and $SETTLE s.")${LAZY_FLAGS:+ Lazy runs (c, d, e) with $LAZY_FLAGS.}
$(uname -r), $(nproc) CPUs, accel $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("accel","?"))' "$work/last.out"), load $(cut -d' ' -f1-3 /proc/loadavg).

| leg | what | median to first output | min | pe's image phase (median) | GETs (proxy) | bytes through the proxy (% of image) | pe --json bytes_fetched |
|---|---|---:|---:|---:|---:|---:|---:|
$(row a "local file: pe run IMAGE.erofs")
$(row b "pe image pull s3://… + pe run s3://… (sum; pull $(want b && median <"$work/b_pull.ms") ms)")
$(row c "pe run s3://…, cold cache, no trace")
$(row d "pe run s3://…, cold cache, trace recorded by a run on another cache")
$(row e "pe run s3://… again on d's cache (warm)")

- cold, no trace / download whole: $(ratio c b 0.6)
- cold, with trace / local: $(ratio d a 1.15)
- warm / local: $(ratio e a 1.05)
- bytes fetched by the cold run (no trace): $(bytes_ok c)
- bytes fetched by the cold run (trace): $(bytes_ok d)
EOF
