#!/usr/bin/env python3
"""Writes tests/fixtures/resnet20_dynamo.onnx (+ .onnx.data): the CIFAR resnet20 of
resnet20_cifar.pth (option A), exported by torch.onnx.export with its defaults (the dynamo
exporter, weights in an external data file). tests/onnx.rs imports it with `resnet convert`
and checks the logits against the .pth's.

    python tools/torch_reference/make_onnx_fixture.py     (venv: bench/requirements.txt)
"""
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIX, CifarResNet  # noqa: E402


def main():
    warnings.filterwarnings("ignore")
    m = CifarResNet(3, "A").eval()
    m.load_state_dict(torch.load(FIX / "resnet20_cifar.pth", weights_only=True), strict=True)
    out = FIX / "resnet20_dynamo.onnx"
    torch.onnx.export(m, (torch.zeros(1, 3, 32, 32),), str(out), input_names=["input"], output_names=["logits"])
    print("wrote", out, "and", out.with_suffix(".onnx.data"), f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
