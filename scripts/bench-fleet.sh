#!/usr/bin/env bash
# Issue 17's figures: echo runs through deploy/haproxy.cfg with one and three
# pe serve workers against straight to one worker (the balancer's cost), and
# the time a SIGKILLed worker takes to leave HAProxy's pool. It starts the
# same fleet as the fleet test (versitygw bucket, three workers of one slot,
# HAProxy from Debian) and prints a Markdown table for docs/benchmarks.md.
# N=runs per throughput row (default 24).
set -euo pipefail
cd "$(dirname "$0")/.."
PE_FLEET_BENCH=1 PE_FLEET_BENCH_N="${N:-24}" go test -count=1 -timeout 30m -run '^TestFleetBench$' -v ./deploy |
	grep -E '^\||DOWN after|^(ok|FAIL|---)'
