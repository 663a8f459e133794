#!/usr/bin/env python3
"""Writes tests/fixtures/grads.safetensors: PyTorch's forward and backward of each training op.

    python tools/torch_reference/make_grad_fixtures.py     (in the pinned venv, see setup_venv.sh)

Per case `NAME`: the inputs (`NAME/x`, `NAME/w`, …), an upstream gradient `NAME/g` (the loss
is sum(y * g)), and PyTorch's `NAME/y`, `NAME/dx`, `NAME/dw`, …; `grads.json` lists the cases
and their settings. tests/grads.rs runs the same ops through our training path and compares.
Small shapes, so the file stays a few hundred KB.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import write_fixture  # noqa: E402

torch.set_num_threads(1)


def main():
    g = torch.Generator().manual_seed(17)
    rand = lambda *s: torch.randn(*s, generator=g)
    t, cases = {}, []

    # Convolutions: (name, x shape, out channels, kernel, stride, padding, dilation, groups)
    convs = [
        ("conv3x3_s1", (2, 8, 9, 9), 12, 3, 1, 1, 1, 1),
        ("conv3x3_s2", (2, 8, 9, 9), 16, 3, 2, 1, 1, 1),
        ("conv1x1_s2", (2, 8, 9, 9), 16, 1, 2, 0, 1, 1),
        ("conv1x1_s1", (2, 16, 7, 7), 8, 1, 1, 0, 1, 1),
        ("stem7x7_s2", (2, 3, 20, 18), 8, 7, 2, 3, 1, 1),
        ("grouped3x3_g4", (2, 16, 8, 8), 16, 3, 1, 1, 1, 4),
        ("grouped3x3_g4_s2", (2, 16, 9, 9), 16, 3, 2, 1, 1, 4),
        ("dilated3x3_d2", (2, 8, 10, 10), 8, 3, 1, 2, 2, 1),
        # Channel counts the in-place row path takes (engine::Conv::run_rows), forward and
        # transposed: 16 → 64 (two panels; the input gradient at a step of 64), rows of 17
        # pixels (two tiles), and a 3-channel stem-like 3×3.
        ("conv3x3_rows_c16", (2, 16, 6, 17), 64, 3, 1, 1, 1, 1),
        ("conv3x3_rows_c3", (2, 3, 5, 15), 16, 3, 1, 1, 1, 1),
    ]
    for name, xs, cout, k, s, p, d, grp in convs:
        x = rand(*xs).requires_grad_()
        w = (rand(cout, xs[1] // grp, k, k) * (2.0 / (xs[1] // grp * k * k)) ** 0.5).requires_grad_()
        y = F.conv2d(x, w, None, s, p, d, grp)
        up = rand(*y.shape)
        (y * up).sum().backward()
        t.update({f"{name}/x": x, f"{name}/w": w, f"{name}/g": up, f"{name}/y": y,
                  f"{name}/dx": x.grad, f"{name}/dw": w.grad})
        cases.append({"name": name, "op": "conv2d", "stride": s, "padding": p, "dilation": d, "groups": grp})

    # BatchNorm in train mode: batch statistics, the running-stat update (unbiased variance).
    for name, xs in [("bn_train", (4, 6, 5, 5)), ("bn_train_1x1", (8, 4, 1, 1))]:
        bn = torch.nn.BatchNorm2d(xs[1])
        with torch.no_grad():
            bn.weight.copy_(1.0 + 0.1 * rand(xs[1]))
            bn.bias.copy_(0.1 * rand(xs[1]))
            bn.running_mean.copy_(0.05 * rand(xs[1]))
            bn.running_var.copy_(1.0 + 0.1 * rand(xs[1]).abs())
        t[f"{name}/gamma"], t[f"{name}/beta"] = bn.weight.detach().clone(), bn.bias.detach().clone()
        t[f"{name}/running_mean0"], t[f"{name}/running_var0"] = bn.running_mean.clone(), bn.running_var.clone()
        x = (2.0 * rand(*xs) + 0.5).requires_grad_()
        bn.train()
        y = bn(x)
        up = rand(*y.shape)
        (y * up).sum().backward()
        t.update({f"{name}/x": x, f"{name}/g": up, f"{name}/y": y, f"{name}/dx": x.grad,
                  f"{name}/dgamma": bn.weight.grad, f"{name}/dbeta": bn.bias.grad,
                  f"{name}/running_mean": bn.running_mean, f"{name}/running_var": bn.running_var})
        cases.append({"name": name, "op": "batch_norm_train", "eps": bn.eps, "momentum": bn.momentum})

    # Max pooling 3x3/2 pad 1 (the ImageNet stem), on ReLU outputs so that ties (zeros) occur:
    # PyTorch sends a tie's gradient to the first maximum in the window, row-major.
    max_pool([("maxpool_s2", (2, 4, 9, 9), False), ("maxpool_s2_ties", (2, 4, 8, 8), True)], rand, t, cases)

    # The option-A shortcut: subsample by 2, zero-pad the channels half before, half after.
    x = rand(2, 16, 8, 8).requires_grad_()
    y = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    up = rand(*y.shape)
    (y * up).sum().backward()
    t.update({"option_a/x": x, "option_a/g": up, "option_a/y": y, "option_a/dx": x.grad})
    cases.append({"name": "option_a", "op": "zero_pad_shortcut", "stride": 2, "out_channels": 32})

    # Global average pooling + fc (the head), as the model ends.
    x = rand(3, 8, 4, 4).requires_grad_()
    w, b = (0.2 * rand(5, 8)).requires_grad_(), (0.1 * rand(5)).requires_grad_()
    y = F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), w, b)
    up = rand(*y.shape)
    (y * up).sum().backward()
    t.update({"head/x": x, "head/w": w, "head/b": b, "head/g": up, "head/y": y, "head/dx": x.grad,
              "head/dw": w.grad, "head/db": b.grad})
    cases.append({"name": "head", "op": "avgpool_linear"})

    # 20 channels: sixteen at a time and a remainder (drawn last, so the cases above keep
    # their values).
    max_pool([("maxpool_s2_c20_ties", (2, 20, 7, 7), True)], rand, t, cases)

    write_fixture("grads", t, cases)


def max_pool(shapes, rand, t, cases):
    for name, xs, relu in shapes:
        x = rand(*xs)
        x = (F.relu(x) if relu else x).detach().requires_grad_()
        y = F.max_pool2d(x, 3, 2, 1)
        up = rand(*y.shape)
        (y * up).sum().backward()
        t.update({f"{name}/x": x, f"{name}/g": up, f"{name}/y": y, f"{name}/dx": x.grad})
        cases.append({"name": name, "op": "max_pool2d", "kernel": 3, "stride": 2, "padding": 1})


if __name__ == "__main__":
    main()
