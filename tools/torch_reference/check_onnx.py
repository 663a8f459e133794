#!/usr/bin/env python3
"""Checks `resnet convert … OUT.onnx` with the reference tools: onnx.checker, then ONNX Runtime
against torchvision on the fixture photos, for every family of the zoo.

    python tools/torch_reference/check_onnx.py path/to/resnet   (venv: bench/requirements.txt)

Deterministic weights (make_fixtures.py) go through a real torch.save file into our
converter; the exported graph must pass `onnx.checker.check_model(full_check=True)` and give
torchvision's logits within 1e-4 relative L2 in ONNX Runtime, at batch 1 and 3. A state
dict does not say it was dilated, so the dilated case passes `--replace-stride-with-dilation`.
"""
import sys
import tempfile
from pathlib import Path
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIX, CifarResNet, eval_tf, load_rgb, set_det_weights, stretch_tf  # noqa: E402

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


if __name__ == "__main__":
    main(sys.argv[1])
