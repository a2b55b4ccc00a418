#!/usr/bin/env bash
# Three sluice instances sharing one 30 MB/s line through Redis, on this
# machine: Redis on 127.0.0.1:16379, an origin on 127.0.0.1:18080 serving a
# 1 GB file, the instances on 127.0.0.1:18081-18083 (admin 9901-9903).
#
#   ./examples/cluster/run.sh            # from the repository's root
#
# Then, in another terminal, download through all three at once and watch
# the aggregate stay at 30 MB/s:
#
#   for p in 18081 18082 18083; do curl -so /dev/null -w "$p %{speed_download} B/s\n" http://127.0.0.1:$p/big & done; wait
#   go run ./cmd/sluice top --admin 127.0.0.1:9901
#   curl -s 127.0.0.1:9901/v1/cluster
#
# Ctrl-C stops everything this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

command -v redis-server >/dev/null || { echo "redis-server not found: install it (apt-get install redis-server)" >&2; exit 1; }
go build -o "$work/sluice" ../../cmd/sluice

redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" &
pids+=($!)
until redis-cli -p 16379 ping >/dev/null 2>&1; do sleep 0.1; done

mkdir "$work/www"
head -c 1000000000 /dev/zero >"$work/www/big"
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$work/www" >"$work/origin.log" 2>&1 &
pids+=($!)

for i in 1 2 3; do
	"$work/sluice" run --config "$here/edge-$i.yaml" 2>"$work/edge-$i.log" &
	pids+=($!)
done
echo "redis 127.0.0.1:16379, origin 127.0.0.1:18080, sluice 127.0.0.1:18081-18083 (logs in $work); Ctrl-C stops"
wait
