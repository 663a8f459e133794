#!/usr/bin/env bash
# Training-step time, ours (burn) against PyTorch, side by side in one run on this CPU.
#   bench/train_step.sh [PYTHON]    PYTHON: an interpreter with torch + torchvision
#                                   (tools/torch_reference/setup_venv.sh makes one)
# Cases from issue 3: resnet20 at batch 128 on 32x32, resnet18 at batch 16 on 112x112.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-/work/torchvenv/bin/python}}
STEPS=${STEPS:-10}
cargo build --release --quiet --example train_step
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(uptime | sed 's/.*load/load/')"
"$PY" -c 'import torch; print("# torch", torch.__version__, "threads", torch.get_num_threads())'
printf '%-9s %5s %4s | %9s %9s %9s %9s | %9s %9s %9s %9s | %6s\n' model batch size \
  ours_ms fwd bwd upd torch_ms fwd bwd upd ratio
for c in "resnet20 128 32" "resnet18 16 112"; do
  read -r ours_n b s o of ob ou < <(target/release/examples/train_step $c "$STEPS")
  read -r _ _ _ t tf tb tu < <("$PY" bench/train_step.py $c "$STEPS")
  printf '%-9s %5s %4s | %9s %9s %9s %9s | %9s %9s %9s %9s | %6s\n' "$ours_n" "$b" "$s" \
    "$o" "$of" "$ob" "$ou" "$t" "$tf" "$tb" "$tu" "$(echo "scale=2; $o / $t" | bc)"
done
