"""PyTorch side of bench/fashion_race.sh: the Fashion-MNIST recipe of docs/results/fashion-mnist.md.

resnet20 (option A, 1 input channel), SGD nesterov 0.9, weight decay 5e-4, batch 128, peak lr 0.1
with one linear warm-up epoch then cosine per iteration (as `resnet train --schedule cosine
--warmup-epochs 1`), pad-2 random crop + horizontal flip, normalised with the training set's
mean and std; the 10k test set after every epoch.

Usage: python bench/fashion_mnist_torch.py DIR [--epochs 20] [--stop-at 0.93] [--seed 42]
Prints one line per epoch: `epoch seconds_so_far top1`, where seconds count training and
evaluation (not the initial data loading), then `reached SECONDS` or `not-reached`.
"""
import argparse
import gzip
import math
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tools/torch_reference")
from make_fixtures import CifarResNet  # noqa: E402  (the CIFAR ResNet the fixtures use)


def idx(path: pathlib.Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(d: pathlib.Path, prefix: str):
    pick = lambda stem: next(p for p in (d / stem, d / f"{stem}.gz") if p.exists())  # noqa: E731
    x = idx(pick(f"{prefix}-images-idx3-ubyte")).astype(np.float32) / 255.0
    y = idx(pick(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--stop-at", type=float, default=0.93)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.dir, "train")
    xte, yte = load(a.dir, "t10k")
    mean, std = xtr.mean().item(), xtr.std().item()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    model = CifarResNet(3, "A", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ce = torch.nn.CrossEntropyLoss()
    batch, per_epoch = 128, math.ceil(len(xtr) / 128)
    warmup, lr = 1.0, 0.1

    def lr_at(epoch, it):  # as src/train/schedule.rs: linear warm-up, then cosine
        t = epoch + it / per_epoch
        if t < warmup:
            return lr * (t + 1 / per_epoch) / warmup
        progress = min(max((t - warmup) / (a.epochs - warmup), 0.0), 1.0)
        return 0.5 * lr * (1 + math.cos(math.pi * progress))

    padded = torch.nn.functional.pad(xtr, (2, 2, 2, 2))
    spent, reached = 0.0, None
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xtr))
        for it in range(per_epoch):
            idxs = order[it * batch : (it + 1) * batch]
            # Pad-2 random crop and flip, per sample.
            oy, ox = torch.randint(0, 5, (2, len(idxs)))
            xb = torch.stack([padded[i, :, y : y + 28, x : x + 28] for i, y, x in zip(idxs.tolist(), oy, ox)])
            flip = torch.rand(len(idxs)) < 0.5
            xb[flip] = xb[flip].flip(3)
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch, it)
            loss = ce(model(xb), ytr[idxs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xte), 256):
                correct += (model(xte[i : i + 256]).argmax(1) == yte[i : i + 256]).sum().item()
        spent += time.perf_counter() - t0
        top1 = correct / len(xte)
        print(f"{epoch + 1} {spent:.1f} {top1:.4f}", flush=True)
        if reached is None and top1 >= a.stop_at:
            reached = spent
            break
    print(f"reached {reached:.1f}" if reached is not None else "not-reached", flush=True)


if __name__ == "__main__":
    main()
