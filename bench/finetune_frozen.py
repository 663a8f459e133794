"""PyTorch side of bench/finetune_frozen.sh: fine-tune only `fc` of a torchvision ResNet on an
image folder, the way `resnet train --freeze-backbone` does.

  python bench/finetune_frozen.py data OUT_DIR [IDX_DIR]      # the 1,000-image folder (+ 500 val)
  python bench/finetune_frozen.py weights OUT.pth [MODEL]     # a seeded random backbone
  python bench/finetune_frozen.py train DIR WEIGHTS.pth [--augment] [--cache] [--epochs 10]

`train` prints one JSON line: wall seconds (start to end, data loading included), the final
validation top-1, and per-epoch accuracy. The backbone gets `requires_grad=False` *and* eval
mode (BatchNorm on its running statistics), which is what ours does; Ikomia's
`feature_extract` leaves BatchNorm in train mode. Hyper-parameters are Ikomia's defaults:
SGD lr 0.001, momentum 0.9, weight decay 1e-4, batch 8.
"""
import argparse
import gzip
import json
import struct
import sys
import time
from pathlib import Path

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_data(out: Path, idx: Path, per_class=(100, 50)):
    from PIL import Image

    def read(name):
        p = idx / (name + ".gz")
        return gzip.decompress(p.read_bytes()) if p.exists() else (idx / name).read_bytes()

    for split, prefix, want in (("train", "train", per_class[0]), ("val", "t10k", per_class[1])):
        images, labels = read(f"{prefix}-images-idx3-ubyte"), read(f"{prefix}-labels-idx1-ubyte")
        n, rows, cols = struct.unpack(">III", images[4:16])
        counts = [0] * 10
        for i in range(n):
            c = labels[8 + i]
            if counts[c] >= want:
                continue
            d = out / split / CLASSES[c].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            px = images[16 + i * rows * cols : 16 + (i + 1) * rows * cols]
            Image.frombytes("L", (cols, rows), px).save(d / f"{i:05d}.png")
            counts[c] += 1
            if min(counts) >= want:
                break


def make_weights(out: Path, model: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, model)().state_dict(), out)


def train(a):
    import torch
    import torchvision
    from torchvision import transforms as T

    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    plain = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    aug = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    train_set = torchvision.datasets.ImageFolder(f"{a.dir}/train", aug if a.augment else plain)
    val_set = torchvision.datasets.ImageFolder(f"{a.dir}/val", plain)
    model = getattr(torchvision.models, a.model)()
    model.load_state_dict(torch.load(a.weights, weights_only=True))
    model.fc = torch.nn.Linear(model.fc.in_features, len(train_set.classes))
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")
    model.eval()  # the backbone in inference mode; fc has no mode
    backbone = torch.nn.Sequential(*list(model.children())[:-1], torch.nn.Flatten(1))
    opt = torch.optim.SGD(model.fc.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    ce = torch.nn.CrossEntropyLoss()
    loader = lambda ds, shuffle: torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=shuffle, num_workers=0)

    def features(ds):
        with torch.no_grad():
            xs, ys = zip(*[(backbone(x), y) for x, y in loader(ds, False)])
        return torch.cat(xs), torch.cat(ys)

    cached = features(train_set) if a.cache else None
    val_feats = features(val_set)
    history = []
    for epoch in range(a.epochs):
        if cached is not None:
            perm = torch.randperm(len(cached[1]))
            batches = [(cached[0][perm[i : i + a.batch_size]], cached[1][perm[i : i + a.batch_size]])
                       for i in range(0, len(perm), a.batch_size)]
            batches = ((model.fc(f), y) for f, y in batches)
        else:
            batches = ((model(x), y) for x, y in loader(train_set, True))
        for logits, y in batches:
            loss = ce(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            top1 = (model.fc(val_feats[0]).argmax(1) == val_feats[1]).float().mean().item()
        history.append(round(top1, 4))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "top1": history[-1], "history": history,
                      "augment": a.augment, "cache": a.cache, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("out", type=Path)
    d.add_argument("idx", type=Path, nargs="?", default=Path("/usr/share/datasets/fashion-mnist"))
    w = sub.add_parser("weights")
    w.add_argument("out", type=Path)
    w.add_argument("model", nargs="?", default="resnet18")
    t = sub.add_parser("train")
    t.add_argument("dir")
    t.add_argument("weights")
    t.add_argument("--model", default="resnet18")
    t.add_argument("--augment", action="store_true")
    t.add_argument("--cache", action="store_true")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.001)
    t.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.cmd == "data":
        make_data(a.out, a.idx)
    elif a.cmd == "weights":
        make_weights(a.out, a.model)
    else:
        train(a)


if __name__ == "__main__":
    sys.exit(main())
