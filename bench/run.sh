#!/usr/bin/env bash
# Measures sluice against direct loopback and nginx's stream proxy in one run.
# Installs nginx (with its stream module) from apt when missing, builds sluice
# and the load tool, and prints the median of 3 runs. Extra arguments go to
# the load tool (see `go run ./bench/loadbench -h`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream >/dev/null
  else
    echo "bench: nginx with libnginx-mod-stream is needed: sudo apt-get install nginx libnginx-mod-stream" >&2
    exit 1
  fi
fi

for a in "$@"; do
  if { [ "$a" = -failover ] || [ "$a" = -rows ]; } && ! command -v haproxy >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    else
      echo "bench: $a needs haproxy: sudo apt-get install haproxy" >&2
      exit 1
    fi
  fi
  if [ "$a" = -cluster ] && ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      echo "bench: -cluster needs redis-server: sudo apt-get install redis-server" >&2
      exit 1
    fi
  fi
  if [ "$a" = -mp4 ] && ! command -v ffmpeg >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
    else
      echo "bench: -mp4 needs ffmpeg: sudo apt-get install ffmpeg" >&2
      exit 1
    fi
  fi
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/sluice" ./cmd/sluice
go build -o "$out/loadbench" ./bench/loadbench
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mode=core
for a in "$@"; do case "$a" in -shape) mode=shape ;; -links) mode=links ;; -mp4) mode=mp4 ;; -admission) mode=admission ;; -failover) mode=failover ;; -cluster) mode=cluster ;; -rows) mode=rows ;; esac; done
haproxy=()
if command -v haproxy >/dev/null; then
  haproxy=(-haproxy "$(command -v haproxy)") # apt-get install haproxy to compare with it too
fi
"$out/loadbench" -sluice "$out/sluice" -nginx "$(command -v nginx)" "${haproxy[@]}" -runs 3 \
  -json "bench/results/$mode-$stamp.json" "$@"
