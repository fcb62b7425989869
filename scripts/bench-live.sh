#!/bin/sh
# bench-live.sh: the data channel of live runs (docs/benchmarks.md, "Live
# runs"): the round trip of a line from the host through the program's
# stdin, cat, and its stdout back to the host's writer (N lines, default
# 200: median, p90, p99), and cat of 100 MiB to stdout with the output to
# /dev/null in the guest, to the I/O disk only (the result), and to the I/O
# disk and the channel (pe run's default), alternating, twice each. Runs
# engine's TestBenchLive under QEMU with TCG; needs the guest kernel and a
# static busybox (the VM tests' fixture).
#
# Usage: scripts/bench-live.sh        N=500 scripts/bench-live.sh
set -eu
cd "$(dirname "$0")/.."
PE_BENCH_LIVE=1 PE_BENCH_N=${N:-200} go test -v -count=1 -timeout 60m -run '^TestBenchLive$' ./engine/ |
	grep -E '^(latency|throughput)'
