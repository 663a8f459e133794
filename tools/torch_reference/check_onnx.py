#!/usr/bin/env python3
"""Checks `resnet convert … OUT.onnx` with the reference tools: onnx.checker, then ONNX Runtime
against torchvision on the fixture photos, for every family of the zoo. Then the way back:
`torch.onnx.export` (the dynamo exporter, torch's default, with its external data file, and
the TorchScript one) → `resnet convert model.onnx out.safetensors` → torchvision with
`strict=True` gives the exported model's logits.

    python tools/torch_reference/check_onnx.py path/to/resnet   (venv: bench/requirements.txt)

Deterministic weights (make_fixtures.py) go through a real torch.save file into our
converter; the exported graph must pass `onnx.checker.check_model(full_check=True)` and give
torchvision's logits within 1e-4 relative L2 in ONNX Runtime, at batch 1 and 3. A state
dict does not say it was dilated, so the dilated case passes `--replace-stride-with-dilation`.
"""
import sys
import tempfile
import warnings
from pathlib import Path
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIX, CifarResNet, eval_tf, load_rgb, set_det_weights, stretch_tf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

tv = torchvision.models
DILATED = ["--replace-stride-with-dilation", "false,true,true"]
CASES = [  # our --model and a label, the torchvision module, the input, extra convert flags
    ("resnet18", lambda: tv.resnet18(), "imagenet"),
    ("resnet50", lambda: tv.resnet50(), "imagenet"),
    ("resnet50 dilated", lambda: tv.resnet50(replace_stride_with_dilation=[False, True, True]), "imagenet", DILATED),
    ("resnext50_32x4d", lambda: tv.resnext50_32x4d(), "imagenet"),
    ("wide_resnet50_2", lambda: tv.wide_resnet50_2(), "imagenet"),
    ("resnet20 option A", lambda: CifarResNet(3, "A"), "cifar"),
    ("resnet20 option B", lambda: CifarResNet(3, "B"), "cifar"),
    ("resnet20 option C", lambda: CifarResNet(3, "C"), "cifar"),
]


def main(resnet_bin):
    photos = ["chelsea.png", "coffee.png", "rocket.jpg"]
    x_in = torch.stack([eval_tf(load_rgb(FIX / p), 256, 224) for p in photos])
    x_cifar = torch.stack([stretch_tf(load_rgb(FIX / p), 32) for p in photos])
    worst = 0.0
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        for i, (label, build, kind, *flags) in enumerate(CASES):
            name = label.split()[0]
            m = set_det_weights(build())
            pth, out = Path(d) / f"{i}.pth", Path(d) / f"{i}.onnx"
            torch.save(m.state_dict(), pth)
            subprocess.run([resnet_bin, "convert", "--model", name, *sum(flags, []), str(pth), str(out)],
                           check=True, capture_output=True)
            onnx.checker.check_model(onnx.load(str(out)), full_check=True)
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            x = x_in if kind == "imagenet" else x_cifar
            for n in (1, 3):
                want = m(x[:n]).numpy()
                got = sess.run(["logits"], {"input": x[:n].numpy()})[0]
                err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                worst = max(worst, err)
                print(f"{label:18s} batch {n}: relative L2 {err:.2e}")
                assert err <= 1e-4, err
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}: "
          f"all pass the checker; worst relative L2 {worst:.2e}")
    import_from_torch(resnet_bin, x_in, x_cifar)


IMPORTS = [  # a label, the torchvision module, the input
    ("resnet18", lambda: tv.resnet18(), "imagenet"),
    ("resnet50 dilated", lambda: tv.resnet50(replace_stride_with_dilation=[False, True, True]), "imagenet"),
    ("resnext50_32x4d", lambda: tv.resnext50_32x4d(), "imagenet"),
    ("resnet20 option A", lambda: CifarResNet(3, "A"), "cifar"),
    ("resnet20 option B", lambda: CifarResNet(3, "B"), "cifar"),
]


def import_from_torch(resnet_bin, x_in, x_cifar):
    """torch.onnx.export → resnet convert → torchvision (strict) against the exported model."""
    warnings.filterwarnings("ignore")
    worst = 0.0
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        for i, (label, build, kind) in enumerate(IMPORTS):
            m = set_det_weights(build()).eval()
            x = x_in if kind == "imagenet" else x_cifar
            for dynamo in (True, False):
                onnx_path, st = Path(d) / f"t{i}{dynamo}.onnx", Path(d) / f"t{i}{dynamo}.safetensors"
                torch.onnx.export(m, (x[:1],), str(onnx_path), dynamo=dynamo, input_names=["input"],
                                  output_names=["logits"], verbose=False)
                run = subprocess.run([resnet_bin, "convert", str(onnx_path), str(st)], capture_output=True,
                                     text=True)
                assert run.returncode == 0, run.stderr
                back = set_det_weights(build()).eval()
                back.load_state_dict(load_file(str(st)), strict=True)
                want, got = m(x).numpy(), back(x).numpy()
                err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                worst = max(worst, err)
                exporter = "dynamo" if dynamo else "torchscript"
                print(f"import {label:18s} {exporter:11s}: {run.stderr.strip().split(' (')[1].split(',')[0]}, "
                      f"relative L2 {err:.2e}")
                assert err <= 1e-4, err
    print(f"import: torch.onnx.export (both exporters) read back into torchvision; worst relative L2 {worst:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
