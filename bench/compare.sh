#!/usr/bin/env bash
# Our engine against PyTorch and ONNX Runtime on this CPU, side by side in one run.
#   bench/compare.sh                  # resnet50 + resnet18, batch 1 and 8, 2 threads
#   MODELS=resnet50 BATCHES=1 THREADS=2 ROUNDS=30 BURST=3 bench/compare.sh
# Sets up its Python reference (bench/requirements.txt) in a venv outside the repo, unless
# BENCH_PYTHON names an interpreter that already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-resnet50,resnet18} BATCHES=${BATCHES:-1,8} THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-15} BURST=${BURST:-3}
CACHE=${BENCH_CACHE:-$HOME/.cache/resnet-bench}
mkdir -p "$CACHE"
PY=${BENCH_PYTHON:-$CACHE/venv/bin/python}
if ! "$PY" -c 'import torch, torchvision, onnxruntime, onnx' 2>/dev/null; then
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q -r bench/requirements.txt
  PY=$CACHE/venv/bin/python
fi
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uptime | sed 's/.*load/load/')"
# This VM's speed drifts by tens of percent within seconds, so the engines take turns in short
# bursts (bench/compare.py) and each ratio is the median of per-round ratios.
OUT=$CACHE/compare.jsonl
: > "$OUT"
for m in ${MODELS//,/ }; do
  for b in ${BATCHES//,/ }; do
    # Peak RSS and the model's FLOPs, from a short run of its own.
    target/release/resnet bench --model "$m" --batch "$b" --threads "$THREADS" --iters 3 --json >> "$OUT"
  done
done
"$PY" bench/compare.py --ours target/release/resnet --model "$MODELS" --batch "$BATCHES" --threads "$THREADS" \
  --rounds "$ROUNDS" --burst "$BURST" --cache "$CACHE" | sed 's/"engine": "fast"/"engine": "fast-interleaved"/' >> "$OUT"
"$PY" - "$OUT" <<'PY'
import json, statistics as st, sys
rows, ratios = {}, {}
for l in open(sys.argv[1]):
    x = json.loads(l)
    key = (x["model"], x["batch"])
    if "ratios" in x:
        ratios[key] = x["ratios"]
    else:
        rows.setdefault(key, {})[x["engine"]] = x
print(f"{'model':<10} {'batch':>5} | {'ours ms':>8} {'ORT ms':>8} {'PyTorch':>8} | {'ours/ORT':>8} {'ours/PT':>8} | "
      f"{'ours/ORT per round (min-max)':<28} | {'GFLOP/s':>7} {'RSS MB':>6}")
for key, r in sorted(ratios.items()):
    e = rows[key]
    ours = e["fast-interleaved"]["median_ms"]
    ox, pt = r["onnxruntime"], r["pytorch"]
    gflops = e["fast"]["gflops"] * e["fast"]["median_ms"] / ours
    print(f"{key[0]:<10} {key[1]:>5} | {ours:>8.2f} {e['onnxruntime']['median_ms']:>8.2f} {e['pytorch']['median_ms']:>8.2f} | "
          f"{st.median(ox):>8.2f} {st.median(pt):>8.2f} | {f'{min(ox):.2f}-{max(ox):.2f} over {len(ox)}':<28} | "
          f"{gflops:>7.1f} {e['fast']['peak_rss_mb']:>6.0f}")
PY
# Start to printed result, one JPEG, resnet50 weights from a local file (a torch.save .pth).
W=$CACHE/resnet50-random.pth
[ -f "$W" ] || "$PY" -c "import torch, torchvision; torch.save(torchvision.models.resnet50().state_dict(), '$W')"
IMG=tests/fixtures/rocket.jpg
best() { local b=999; for _ in 1 2 3 4 5; do local s=$(date +%s.%N); "$@" > /dev/null; local e=$(date +%s.%N); b=$(echo "if ($e - $s < $b) $e - $s else $b" | bc -l); done; echo "$b"; }
ours=$(best target/release/resnet classify --model resnet50 --weights "$W" "$IMG")
theirs=$(best "$PY" bench/classify_torchvision.py "$W" "$IMG")
rss=$( { /usr/bin/time -f '%M' target/release/resnet classify --model resnet50 --weights "$W" "$IMG" > /dev/null; } 2>&1 | tail -1)
printf 'classify one JPEG, resnet50 from a local .pth (best of 5): ours %.3f s, Python torchvision %.3f s, ratio %.2f; our peak RSS %d MB\n' \
  "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)" "$((rss / 1024))"
