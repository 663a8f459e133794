"""PyTorch side of bench/train_step.sh: one training step (forward, backward, SGD) on random data.

Usage: python bench/train_step.py MODEL BATCH SIZE [STEPS] [IN_CH] [CLASSES]
Prints `MODEL BATCH SIZE median_ms forward_ms backward_ms update_ms peak_rss_mb`, the fields
of `resnet bench --train --format json`.
"""
import resource
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tools/torch_reference")
from make_fixtures import CifarResNet  # noqa: E402  (the CIFAR ResNet the fixtures use)


def main():
    name, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    in_ch = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    torch.manual_seed(0)
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) % 6 == 2:
        classes = int(sys.argv[6]) if len(sys.argv) > 6 else 10
        model = CifarResNet((int(name[6:]) - 2) // 6, "A", num_classes=classes, in_channels=in_ch)
    else:
        classes = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
        model = getattr(torchvision.models, name)(num_classes=classes)
        if in_ch != 3:
            model.conv1 = torch.nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, in_ch, size, size)
    y = torch.arange(batch) % classes
    ce = torch.nn.CrossEntropyLoss()
    total, fwd, bwd, upd = [], [], [], []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = ce(model(x), y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 2:
            total.append((t3 - t0) * 1e3)
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            upd.append((t3 - t2) * 1e3)
    med = statistics.median
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{name} {batch} {size} {med(total):.1f} {med(fwd):.1f} {med(bwd):.1f} {med(upd):.1f} {rss_mb:.0f}")


if __name__ == "__main__":
    main()
