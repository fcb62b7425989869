#!/usr/bin/env bash
# bench-lazy-ab.sh: two pe builds against each other on scripts/bench-lazy.sh's
# leg d (a cold cache, the trace in the bucket), in the same sitting. Each
# round runs leg a (the local image, with NEW), d with OLD and d with NEW, in
# turns (the order reverses every round), each after an untimed local run as
# in bench-lazy.sh. It reuses the work directory a `KEEP=1` run of
# bench-lazy.sh left (its bucket, with the image pushed and the trace
# recorded; its prepared cache; its input), and starts versitygw and the
# delay proxy for it again.
#
# Each run's line: round, build, ms to exit, pe's total, the guest program's
# ms, ms the guest stalled for chunks, GETs. The summary: medians of pe's
# total, and the medians of per-round d/a with a 95 % bootstrap interval.
# Each run's JSON is kept as WORK/ab-ROUND-BUILD.json.
#
# Usage: KEEP=1 LEGS=d ROUNDS=1 scripts/bench-lazy.sh   (once, for WORK)
#        scripts/bench-lazy-ab.sh WORK OLD_PE NEW_PE [ROUNDS]
#        RATE=30000000 DELAY=30ms: the link (bench-lazy.sh's defaults)
#        STORE_SCHED=idle|nice, STORE_NICE=N: how versitygw and the proxy
#          are scheduled, as in bench-lazy.sh (default idle)
# Run it under scripts/bench-quiet.sh as bench-lazy.sh is.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
work=$(realpath "$1")
OLD=$(realpath "$2")
NEW=$(realpath "$3")
ROUNDS=${4:-10}
RATE=${RATE:-125000000}
DELAY=${DELAY:-30ms}
STORE_NICE=${STORE_NICE:-19}
STORE_SCHED=${STORE_SCHED:-idle}
case $STORE_SCHED in
nice) store=(nice -n "$STORE_NICE") ;;
idle) store=(chrt -i 0) ;;
*) echo "bench-lazy-ab: STORE_SCHED=$STORE_SCHED: want nice or idle" >&2; exit 2 ;;
esac
IMAGE=${PE_BENCH_IMAGE:-${BENCH_CACHE:-/work/bench-cache}/gcc-1.5g.erofs}
for f in "$work/gw/bench" "$work/template/pe" "$work/in" "$work/s3delay" "$IMAGE"; do
	[ -e "$f" ] || { echo "bench-lazy-ab: $f is missing (a KEEP=1 run of bench-lazy.sh makes WORK)" >&2; exit 1; }
done
AK=AKIDPEBENCH SK=pe-bench-secret-key
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"${store[@]}" versitygw --access "$AK" --secret "$SK" --port "127.0.0.1:$port" posix "$work/gw" >"$work/ab-versitygw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port" && break; sleep 0.1; done
rm -f "$work/ab-proxy.addr"
"${store[@]}" "$work/s3delay" -target "http://127.0.0.1:$port" -delay "$DELAY" -rate "$RATE" -log /dev/null >"$work/ab-proxy.addr" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/ab-proxy.addr" ] && break; sleep 0.1; done
none=$work/no-aws-config
proxy=http://$(head -1 "$work/ab-proxy.addr")
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=us-east-1 AWS_PROFILE='' \
	AWS_CONFIG_FILE=$none AWS_SHARED_CREDENTIALS_FILE=$none AWS_SESSION_TOKEN='' AWS_ENDPOINT_URL_S3='' \
	AWS_ENDPOINT_URL=$proxy
unset AWS_DEFAULT_REGION
REF=s3://bench/ce/gcc:12
CMD=(sh -c 'cd /run/pe/input && gcc -c -o /tmp/hello.o hello.c && echo ok')
A=$work/ab-cache-a D=$work/ab-cache-d out=$work/ab.txt
rm -rf "$A" && mkdir -p "$A" && cp -a "$work/template/pe" "$A/pe"
: >"$out"
# fields PE.JSON: pe's total, guest program, stalled and GETs of a run.
fields() {
	python3 -c '
import json, sys
j = json.load(open(sys.argv[1])); d = j["duration_ms"]; b = j.get("image_blocks") or {}
print("%.0f %.0f %d %d" % (d["total"], d["guest_program"], b.get("stalled_ns", 0) // 1000000, b.get("gets", 0)))' "$1"
}
now() { date +%s%N; }
for i in $(seq "$ROUNDS"); do
	order="old new a"
	[ $((i % 2)) = 0 ] && order="a new old"
	for leg in $order; do
		if [ "$leg" = a ]; then
			XDG_CACHE_HOME=$A "$NEW" run --input "$work/in" "$IMAGE" "${CMD[@]}" >/dev/null
			t0=$(now)
			XDG_CACHE_HOME=$A "$NEW" run --json --input "$work/in" "$IMAGE" "${CMD[@]}" >"$work/ab.json"
		else
			pe=$OLD
			[ "$leg" = new ] && pe=$NEW
			# A fresh cache holding the boot snapshot of this build (its
			# key names the build), and a local run before, as leg d.
			rm -rf "$D" && mkdir -p "$D" && cp -a "$work/template/pe" "$D/pe"
			XDG_CACHE_HOME=$D "$pe" run "$IMAGE" true >/dev/null
			XDG_CACHE_HOME=$A "$NEW" run --input "$work/in" "$IMAGE" "${CMD[@]}" >/dev/null
			t0=$(now)
			XDG_CACHE_HOME=$D "$pe" run --json --input "$work/in" "$REF" "${CMD[@]}" >"$work/ab.json"
		fi
		echo "$i $leg $((($(now) - t0) / 1000000)) $(fields "$work/ab.json")" | tee -a "$out"
		cp "$work/ab.json" "$work/ab-$i-$leg.json"
	done
done
python3 - "$out" <<'EOF'
import random, statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r[0], {})[r[1]] = float(r[3])
for leg in ("a", "old", "new"):
    print("%-3s pe's total, median %.0f ms" % (leg, st.median(v[leg] for v in by.values())))
random.seed(1)
for leg in ("old", "new"):
    ratios = [v[leg] / v["a"] for v in by.values()]
    boot = sorted(st.median(random.choices(ratios, k=len(ratios))) for _ in range(4000))
    print("%-3s d/a per-round median %.2f (95 %% interval %.2f-%.2f)" % (leg, st.median(ratios), boot[100], boot[3899]))
EOF
