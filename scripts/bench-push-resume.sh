#!/usr/bin/env bash
# Times `pe image push` of a random EROFS image (SIZE_MB, default 1024) to
# a versitygw on loopback: a fresh push, then a push stopped with SIGINT
# (Ctrl-C) once the server holds about half the image's bytes as parts
# (versitygw's posix root, polled every 50 ms) and the push that resumes
# it. Bytes sent and reused come from pe's own log (bytes_sent: the part
# bytes this push sent; bytes_reused: those it found in the bucket). Each
# round starts from an empty bucket. Needs versitygw, mkfs.erofs, curl.
# Usage: [SIZE_MB=1024] [ROUNDS=2] [JOBS=4] scripts/bench-push-resume.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-2}
JOBS=${JOBS:-4}
work=$(mktemp -d /tmp/pe-pushbench.XXXXXX)
gw_pid=
stop_gw() { if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; gw_pid=; fi; }
trap 'stop_gw; rm -rf "$work"' EXIT
go build -o "$work/pe" ./cmd/pe
mkdir "$work/src"
head -c $((SIZE_MB << 20)) /dev/urandom >"$work/src/blob"
mkfs.erofs --quiet "$work/big.erofs" "$work/src"
rm -rf "$work/src"
size=$(stat -c %s "$work/big.erofs")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench-secret-key
export AWS_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PROFILE=
start_gw() { # a fresh server and an empty bucket "images"
	stop_gw
	rm -rf "$work/gw"
	mkdir "$work/gw"
	versitygw --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --port "127.0.0.1:$port" posix "$work/gw" >"$work/gw.log" 2>&1 &
	gw_pid=$!
	for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT_URL/" && break; sleep 0.1; done
	curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
		-H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
		-X PUT "$AWS_ENDPOINT_URL/images" >/dev/null
}
field() { sed -n "s/.*msg=\"pushed image\".* $1=\([^ ]*\).*/\1/p" "$work/log"; }
push() { # push; sets secs, sent, reused
	/usr/bin/time -f %e -o "$work/t" "$work/pe" --log-level info image push --jobs "$JOBS" "$work/big.erofs" s3://images/bench/big:v1 >/dev/null 2>"$work/log"
	secs=$(cat "$work/t") sent=$(field bytes_sent) reused=$(field bytes_reused)
}
echo "image: $size bytes, 16 MiB parts, --jobs $JOBS; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
	start_gw
	push
	printf 'round %d fresh push:       %6.1f s  sent %5d MiB\n' "$r" "$secs" $((sent >> 20))
	start_gw
	start=$(date +%s.%N)
	"$work/pe" image push --jobs "$JOBS" "$work/big.erofs" s3://images/bench/big:v1 >/dev/null 2>"$work/intr.log" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		held=$(du -sb "$work/gw/images" | cut -f1)
		[ "$held" -ge $((size / 2)) ] && break
		sleep 0.05
	done
	kill -INT "$pid"
	wait "$pid" || true
	printf 'round %d interrupted after %6.1f s\n' "$r" "$(echo "$(date +%s.%N) - $start" | bc -l)"
	push
	printf 'round %d resumed push:     %6.1f s  sent %5d MiB, reused %5d MiB (%.0f%%)\n' "$r" "$secs" $((sent >> 20)) $((reused >> 20)) "$(echo "100 * $reused / $size" | bc -l)"
	push
	printf 'round %d push again:       %6.1f s  (the bucket has the image: indexing the file and HEADs)\n' "$r" "$secs"
done
