#!/usr/bin/env bash
# Our engine against PyTorch and ONNX Runtime on this CPU, side by side in one run.
#   bench/compare.sh                  # resnet50 + resnet18, batch 1 and 8, 2 threads
#   MODELS=resnet50 BATCHES=1 THREADS=2 ITERS=30 ROUNDS=5 bench/compare.sh
# Sets up its Python reference (bench/requirements.txt) in a venv outside the repo, unless
# BENCH_PYTHON names an interpreter that already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-resnet50,resnet18} BATCHES=${BATCHES:-1,8} THREADS=${THREADS:-2} ITERS=${ITERS:-10} ROUNDS=${ROUNDS:-3}
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
# This VM's speed drifts by tens of percent within minutes, so every case runs ROUNDS times,
# each round ours and the references back to back; ratios are taken within a round, and the
# median round is reported.
rm -f "$CACHE"/round.*.jsonl
for r in $(seq "$ROUNDS"); do
  for m in ${MODELS//,/ }; do
    for b in ${BATCHES//,/ }; do
      target/release/resnet bench --model "$m" --batch "$b" --threads "$THREADS" --iters "$ITERS" --json >> "$CACHE/round.$r.jsonl"
      "$PY" bench/compare.py --model "$m" --batch "$b" --threads "$THREADS" --iters "$ITERS" --cache "$CACHE" >> "$CACHE/round.$r.jsonl"
    done
  done
done
"$PY" - "$CACHE"/round.*.jsonl <<'PY'
import json, statistics as st, sys
runs = {}  # (model, batch) -> [{engine: row}] per round
for r, f in enumerate(sys.argv[1:]):
    for l in open(f):
        if l.strip():
            x = json.loads(l)
            runs.setdefault((x["model"], x["batch"]), {}).setdefault(r, {})[x["engine"]] = x
print(f"{'model':<10} {'batch':>5} | {'ours ms':>8} {'ORT ms':>8} {'PyTorch':>8} | {'ours/ORT':>8} {'ours/PT':>8} | "
      f"{'ours/ORT per round':<24} | {'GFLOP/s':>7} {'RSS MB':>6}")
for (m, b), rounds in sorted(runs.items()):
    rs = [e for e in rounds.values() if {"fast", "onnxruntime", "pytorch"} <= e.keys()]
    med = lambda eng: st.median(e[eng]["median_ms"] for e in rs)
    ox = [e["fast"]["median_ms"] / e["onnxruntime"]["median_ms"] for e in rs]
    pt = [e["fast"]["median_ms"] / e["pytorch"]["median_ms"] for e in rs]
    print(f"{m:<10} {b:>5} | {med('fast'):>8.2f} {med('onnxruntime'):>8.2f} {med('pytorch'):>8.2f} | "
          f"{st.median(ox):>8.2f} {st.median(pt):>8.2f} | {' '.join(f'{v:.2f}' for v in ox):<24} | "
          f"{st.median(e['fast']['gflops'] for e in rs):>7.1f} {max(e['fast']['peak_rss_mb'] for e in rs):>6.0f}")
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
