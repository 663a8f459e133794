#!/usr/bin/env bash
# Our engine against PyTorch and ONNX Runtime on this CPU, side by side in one run.
#   bench/compare.sh                  # resnet50 + resnet18, batch 1 and 8, 2 threads
#   MODELS=resnet50 BATCHES=1 THREADS=2 ITERS=30 bench/compare.sh
# Sets up its Python reference (bench/requirements.txt) in a venv outside the repo, unless
# BENCH_PYTHON names an interpreter that already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-resnet50,resnet18} BATCHES=${BATCHES:-1,8} THREADS=${THREADS:-2} ITERS=${ITERS:-20}
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
target/release/resnet bench --model "$MODELS" --batch "$BATCHES" --threads "$THREADS" --iters "$ITERS" --json > "$CACHE/ours.jsonl"
"$PY" bench/compare.py --model "$MODELS" --batch "$BATCHES" --threads "$THREADS" --iters "$ITERS" --cache "$CACHE" > "$CACHE/ref.jsonl"
"$PY" - "$CACHE/ours.jsonl" "$CACHE/ref.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
key = lambda r: (r["model"], r["batch"])
by = {}
for r in rows:
    by.setdefault(key(r), {})[r["engine"]] = r
print(f"{'model':<10} {'batch':>5} | {'ours ms':>8} {'min':>7} {'max':>7} | {'ORT ms':>8} {'PyTorch':>8} | {'ours/ORT':>8} {'ours/PT':>8} | {'GFLOP/s':>7} {'RSS MB':>6}")
for (m, b), e in sorted(by.items()):
    o, x, p = e["fast"], e["onnxruntime"], e["pytorch"]
    print(f"{m:<10} {b:>5} | {o['median_ms']:>8.2f} {o['min_ms']:>7.2f} {o['max_ms']:>7.2f} | "
          f"{x['median_ms']:>8.2f} {p['median_ms']:>8.2f} | {o['median_ms']/x['median_ms']:>8.2f} "
          f"{o['median_ms']/p['median_ms']:>8.2f} | {o['gflops']:>7.1f} {o['peak_rss_mb']:>6.0f}")
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
