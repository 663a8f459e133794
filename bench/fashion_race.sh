#!/usr/bin/env bash
# Wall time to 93.0 % Fashion-MNIST test accuracy, ours against PyTorch, one after the other on
# this CPU, with the recipe of docs/results/fashion-mnist.md (20-epoch cosine schedule; each
# side stops at the first epoch that reaches the target).
#   bench/fashion_race.sh [PYTHON] [DATA_DIR]
# PYTHON: an interpreter with bench/requirements.txt; DATA_DIR: Debian's dataset-fashion-mnist.
# Ours times training and evaluation per epoch (metrics.csv `seconds`); PyTorch the same.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-$HOME/.cache/resnet-bench/venv/bin/python}}
DATA=${2:-/usr/share/datasets/fashion-mnist}
TARGET=${TARGET:-0.93}
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "# $(uptime | sed 's/.*load/load/')"
run=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$run"' EXIT
target/release/resnet train --data "idx:$DATA" --model resnet20 --in-channels 1 --recipe cifar \
  --input-size 28 --pad 2 --epochs 20 --batch-size 128 --lr 0.1 --nesterov --weight-decay 5e-4 \
  --schedule cosine --warmup-epochs 1 --seed 42 --out "$run/ours" >"$run/ours.log" 2>&1 &
pid=$!
ours=""
while kill -0 "$pid" 2>/dev/null; do
  sleep 5
  ours=$(awk -F, -v t="$TARGET" 'NR > 1 { s += $8; if ($6 >= t) { printf "%d %.1f %s\n", $1, s, $6; exit } }' \
    "$run/ours/metrics.csv" 2>/dev/null || true)
  [ -n "$ours" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; break; }
done
echo "ours:    ${ours:-not reached}  (epoch seconds_to_target top1)"
"$PY" bench/fashion_mnist_torch.py "$DATA" --stop-at "$TARGET" | tail -2 | sed 's/^/pytorch: /'
