#!/usr/bin/env bash
# Runs every fuzz target (or those named) for 1,000,000 executions or 30 minutes, under the
# memory limits of issue 14, starting from the committed seeds. Needs nightly and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Logs go to fuzz/logs/<target>.log; crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pickle safetensors pth request image onnx)
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t"
  cargo +nightly fuzz run -s none -O "$t" "corpus/$t" "seeds/$t" -- \
    -runs=1000000 -max_total_time=1800 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 2>&1 | tee "logs/$t.log" | grep -E "^#[0-9]+.*DONE|INFO: Running|Done|ERROR|panicked|SUMMARY" || true
done
