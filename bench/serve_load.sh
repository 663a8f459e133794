#!/usr/bin/env bash
# Load on loopback: CLIENTS clients for SECS seconds against `resnet serve`, once with dynamic
# batching (--max-batch 16) and once one image at a time (--max-batch 1), same binary, same run.
# Prints each run's JSON (requests/s, p50/p99/max ms, failures, server RSS) and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-fashion-mnist-resnet20}
WEIGHTS=${WEIGHTS:-DEFAULT}   # e.g. MODEL=resnet50 WEIGHTS=random IMAGE=tests/fixtures/chelsea.png
IMAGE=${IMAGE:-examples/fashion/0000-ankle-boot.png}
CLIENTS=${CLIENTS:-16}
SECS=${SECS:-20}
PORT=${PORT:-18090}

cargo build --release --bin resnet --example serve_load
declare -A rps
for mb in 16 1; do
  ./target/release/resnet serve --model "$MODEL" --weights "$WEIGHTS" --addr "127.0.0.1:$PORT" --max-batch "$mb" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  out=$(./target/release/examples/serve_load "http://127.0.0.1:$PORT/v1/classify" "$IMAGE" "$CLIENTS" "$SECS" "$pid")
  echo "max-batch $mb: $out"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^resnet_batch_size_(sum|count)' | tr '\n' ' '
  echo
  rps[$mb]=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests_per_second"])' "$out")
  kill -TERM "$pid"
  wait "$pid" || true
done
python3 -c 'import sys; b, o = float(sys.argv[1]), float(sys.argv[2]); print(f"batching: {b:.0f} req/s vs one at a time: {o:.0f} req/s = {b/o:.2f}x")' "${rps[16]}" "${rps[1]}"
