#!/usr/bin/env bash
# Creates the PyTorch venv OUTSIDE the repo (default ../torch-venv next to the clone).
# Only fixture generation needs it; CI never does.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TORCH_VENV:-$here/../../../torch-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -r "$here/requirements.txt"
echo "venv ready: $venv  (run: $venv/bin/python $here/make_fixtures.py)"
