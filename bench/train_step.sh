#!/usr/bin/env bash
# Training-step time, ours against PyTorch, side by side in one run on this CPU.
#   bench/train_step.sh [PYTHON]    PYTHON: an interpreter with torch + torchvision
#                                   (tools/torch_reference/setup_venv.sh makes one)
# Ours is `resnet bench --train --format json` (its `median_ms`, forward, backward, update,
# peak RSS); PyTorch's is bench/train_step.py. Cases from issue 17: resnet20 at batch 128 on
# 32x32, resnet18 at batch 16 on 112x112.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-/work/torchvenv/bin/python}}
STEPS=${STEPS:-10}
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "# $(uptime | sed 's/.*load/load/')"
"$PY" -c 'import torch; print("# torch", torch.__version__, "threads", torch.get_num_threads())'
printf '%-9s %5s %4s | %9s %9s %9s %9s %7s | %9s %9s %9s %9s %7s | %6s\n' model batch size \
  ours_ms fwd bwd upd rss_mb torch_ms fwd bwd upd rss_mb ratio
for c in "resnet20 128 32" "resnet18 16 112"; do
  read -r m b s <<<"$c"
  # One process per case, so that each peak RSS is that case's own.
  read -r o of ob ou orss < <(target/release/resnet bench --train --model "$m" --batch "$b" --size "$s" \
      --iters "$STEPS" --format json | "$PY" -c 'import json,sys; r=json.loads(sys.stdin.readline())
print("%.1f %.1f %.1f %.1f %.0f" % (r["median_ms"], r["forward_ms"], r["backward_ms"], r["update_ms"], r["peak_rss_mb"]))')
  read -r _ _ _ t tf tb tu trss < <("$PY" bench/train_step.py "$m" "$b" "$s" "$STEPS")
  printf '%-9s %5s %4s | %9s %9s %9s %9s %7s | %9s %9s %9s %9s %7s | %6s\n' "$m" "$b" "$s" \
    "$o" "$of" "$ob" "$ou" "$orss" "$t" "$tf" "$tb" "$tu" "$trss" "$(echo "scale=2; $o / $t" | bc)"
done
