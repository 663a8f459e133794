#!/usr/bin/env bash
# Frozen-backbone fine-tuning, ours against PyTorch, one after the other in one run on this CPU.
#   bench/finetune_frozen.sh [PYTHON]   PYTHON: an interpreter with bench/requirements.txt
# resnet18 on a 1,000-image folder (100 Fashion-MNIST training images per class, 500 test
# images for validation), 10 epochs, Ikomia's defaults (SGD lr 0.001, momentum 0.9, weight
# decay 1e-4, batch 8). No ImageNet weights are reachable offline, so both sides start from
# the same seeded random backbone (a torch.save file). Wall time is start to end, with peak RSS.
#   plain:   no augmentation. Ours computes each image's features once; PyTorch runs the
#            frozen backbone every epoch (requires_grad=False), and again with its features
#            cached by hand.
#   augment: RandomResizedCrop + flip, features of every augmented batch each epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-$HOME/.cache/resnet-bench/venv/bin/python}}
WORK=${WORK:-$HOME/.cache/resnet-bench/finetune}
EPOCHS=${EPOCHS:-10}
cargo build --release --quiet
mkdir -p "$WORK"
[ -d "$WORK/data/train" ] || "$PY" bench/finetune_frozen.py data "$WORK/data"
[ -f "$WORK/resnet18.pth" ] || "$PY" bench/finetune_frozen.py weights "$WORK/resnet18.pth"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "# $(uptime | sed 's/.*load/load/')"
timed() { # prints "seconds peak_rss_mb" of the command, its stdout to $WORK/out.json
  /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$@" > "$WORK/out.json" 2>/dev/null
  awk '{printf "%s %.0f\n", $1, $2 / 1024}' "$WORK/time.txt"
}
ours() { # MODE [train flags]
  rm -rf "$WORK/run"
  read -r s rss < <(timed target/release/resnet train --data "$WORK/data" --model resnet18 \
    --weights "$WORK/resnet18.pth" --freeze-backbone --epochs "$EPOCHS" --batch-size 8 --lr 0.001 \
    --momentum 0.9 --weight-decay 1e-4 --schedule constant --out "$WORK/run" --format json "${@:2}")
  top1=$(grep '"epoch"' "$WORK/out.json" | tail -1 | "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["top1"])')
  printf '%-28s %8s %8s %8s\n' "ours $1" "$s" "$top1" "$rss"
}
torch() { # LABEL [flags]
  read -r s rss < <(timed "$PY" bench/finetune_frozen.py train "$WORK/data" "$WORK/resnet18.pth" --epochs "$EPOCHS" "${@:2}")
  top1=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["top1"])' "$WORK/out.json")
  printf '%-28s %8s %8s %8s\n' "pytorch $1" "$s" "$top1" "$rss"
}
printf '%-28s %8s %8s %8s\n' case seconds top1 rss_mb
ours "plain (cached)" --no-augment
torch "plain"
torch "plain, cached by hand" --cache
ours "augment"
torch "augment" --augment
