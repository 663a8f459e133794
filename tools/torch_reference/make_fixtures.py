#!/usr/bin/env python3
"""Writes the torchvision reference fixtures that the Rust tests compare against.

Run it in the pinned venv (see setup_venv.sh), from anywhere:

    python tools/torch_reference/make_fixtures.py              # writes tests/fixtures/
    python tools/torch_reference/make_fixtures.py roundtrip BIN  # checks BIN's safetensors export in torchvision

Weights are deterministic and formula-made (see `det_tensor`), so the Rust tests rebuild
the very same weights without shipping 100 MB files; only the small CIFAR model is
stored, as a real `torch.save` .pth and as .safetensors.
"""
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms._presets import ImageClassification

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
SKIMAGE = Path(os.environ.get("SKIMAGE_DATA", "/work/dl/skimage/data"))

torch.set_num_threads(2)


# ---------------------------------------------------------------- deterministic weights
def fnv1a(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def det_tensor(key: str, shape) -> torch.Tensor:
    """A few distinct values per tensor; mirrored by tests/common/mod.rs::det_tensor."""
    n = int(np.prod(shape)) if len(shape) else 1
    h = fnv1a(key)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(h % 1000, dtype=torch.int64)
    # An integer hash of (index, key): decorrelated like random init, exact in any language.
    x = (np.arange(n, dtype=np.uint64) ^ np.uint64(h)) * np.uint64(0x9E3779B1) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    v = (x % np.uint64(11)).astype(np.float64) - 5.0
    if key.endswith("running_var"):
        x = 1.0 + (v + 5.0) * 0.05
    elif key.endswith("running_mean"):
        x = v * 0.02
    elif len(shape) == 1 and key.endswith("weight"):
        x = 1.0 + v * 0.02
    elif key.endswith("bias"):
        x = v * 0.01
    else:
        fan_in = n // shape[0]
        x = v * math.sqrt(0.2 / fan_in)
    return torch.from_numpy(x.astype(np.float32)).reshape(shape)


def write_fixture(name: str, tensors: dict, cases: list, **versions):
    """tests/fixtures/NAME.safetensors and NAME.json ({versions, cases}), as the tests read them."""
    tensors = {k: v.detach().contiguous().float() for k, v in tensors.items()}
    save_file(tensors, FIX / f"{name}.safetensors")
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, **versions}
    (FIX / f"{name}.json").write_text(json.dumps({"versions": versions, "cases": cases}, indent=1) + "\n")
    print("wrote", FIX / f"{name}.safetensors", sum(v.numel() for v in tensors.values()), "values")


def set_det_weights(model: nn.Module) -> nn.Module:
    sd = {k: det_tensor(k, tuple(t.shape)) for k, t in model.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------- the paper's CIFAR ResNets
class CifarBlock(nn.Module):
    def __init__(self, cin, planes, stride, option, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual, self.option, self.stride = residual, option, stride
        self.pad = planes - cin
        changes = stride != 1 or cin != planes
        if residual and (option == "C" or (option == "B" and changes)):
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.downsample = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.residual:
            return F.relu(out)
        if self.downsample is not None:
            sc = self.downsample(x)
        elif self.stride != 1 or self.pad:
            # Option A: subsample, then zero-pad the new channels (half before, half after).
            sc = x[:, :, :: self.stride, :: self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = x
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, n, option="A", residual=True, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, planes in enumerate([16, 32, 64]):
            blocks = []
            for b in range(n):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(CifarBlock(cin, planes, stride, option, residual))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- images
def load_rgb(path: Path) -> Image.Image:
    """What our decoder promises: EXIF orientation applied, then PIL's convert("RGB")."""
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    return im.convert("RGB")


def eval_tf(img, resize, crop):
    return ImageClassification(crop_size=crop, resize_size=resize)(img)


def stretch_tf(img, size):
    img = TF.resize(img, [size, size], InterpolationMode.BILINEAR, antialias=True)
    t = TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float)
    return TF.normalize(t, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def write_png16(path: Path, arr: np.ndarray):
    """PIL cannot write 16-bit RGB PNGs, so write one by hand (color type 2 or 0, depth 16)."""
    h, w = arr.shape[:2]
    color = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    )


def make_images():
    """Copies the real photos and derives small variants in every supported format."""
    for name in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        (FIX / name).write_bytes((SKIMAGE / name).read_bytes())
    base = Image.open(SKIMAGE / "chelsea.png").convert("RGB").resize((90, 60), Image.BILINEAR)
    a = np.asarray(base)
    small = {}
    rgba = np.concatenate([a, (np.arange(90)[None, :, None] * 2 + np.zeros((60, 1, 1))).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(FIX / "small_rgba.png")
    base.convert("L").save(FIX / "small_gray.png")
    base.convert("LA").save(FIX / "small_la.png")
    base.convert("P", palette=Image.ADAPTIVE, colors=64).save(FIX / "small_palette.gif")
    base.save(FIX / "small_lossless.webp", lossless=True)
    base.save(FIX / "small.bmp")
    base.save(FIX / "small.tiff")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    base.save(FIX / "small_exif6.png", exif=exif)
    base.save(FIX / "small_exif6.jpg", exif=exif, quality=95)
    a16 = a.astype(np.uint16) * 257 + (np.arange(90)[None, :, None] % 200).astype(np.uint16)
    write_png16(FIX / "small_rgb16.png", a16)
    write_png16(FIX / "small_gray16.png", a16[..., 0])
    small["small_rgba.png"] = "lossless"
    for n in ["small_gray.png", "small_la.png", "small_palette.gif", "small_lossless.webp", "small.bmp",
              "small.tiff", "small_exif6.png", "small_rgb16.png"]:
        small[n] = "lossless"
    small["small_exif6.jpg"] = "jpeg"
    # PIL clips 16-bit grayscale to 255 in convert("RGB") (white image). We keep the high byte,
    # as PIL itself does for 16-bit RGB; the reference is PIL on that 8-bit image.
    Image.fromarray((a16[..., 0] >> 8).astype(np.uint8), "L").save("/tmp/_gray16_ref.png")
    small["small_gray16.png"] = "gray16"
    return small


# ---------------------------------------------------------------- main
def main():
    FIX.mkdir(parents=True, exist_ok=True)
    tensors = {}
    manifest = {"versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                             "pillow": Image.__version__, "numpy": np.__version__},
                "preprocess": [], "models": []}

    small = make_images()
    cases = [("chelsea.png", "v1", 256, 224), ("coffee.png", "v2", 232, 224), ("rocket.jpg", "v1", 256, 224)]
    for name, tag, resize, crop in cases:
        x = eval_tf(load_rgb(FIX / name), resize, crop)
        key = f"pre/{name}/{tag}"
        tensors[key] = x.contiguous()
        manifest["preprocess"].append({"key": key, "image": name, "resize": resize, "crop": crop,
                                       "kind": "jpeg" if name.endswith(".jpg") else "lossless"})
    for name, kind in small.items():
        src = "/tmp/_gray16_ref.png" if kind == "gray16" else FIX / name
        x = eval_tf(load_rgb(Path(src)), 72, 64)
        key = f"pre/{name}/72-64"
        tensors[key] = x.contiguous()
        manifest["preprocess"].append({"key": key, "image": name, "resize": 72, "crop": 64,
                                       "kind": "jpeg" if kind == "jpeg" else "lossless"})
    x = stretch_tf(load_rgb(FIX / "chelsea.png"), 32)
    tensors["pre/chelsea.png/stretch32"] = x.contiguous()
    manifest["preprocess"].append({"key": "pre/chelsea.png/stretch32", "image": "chelsea.png",
                                   "stretch": 32, "kind": "lossless"})

    tv = torchvision.models
    models = [
        ("resnet18", "resnet18", lambda: tv.resnet18(), "pre/chelsea.png/v1"),
        ("resnet50", "resnet50", lambda: tv.resnet50(), "pre/coffee.png/v2"),
        ("resnext50_32x4d", "resnext50_32x4d", lambda: tv.resnext50_32x4d(), "pre/chelsea.png/v1"),
        ("wide_resnet50_2", "wide_resnet50_2", lambda: tv.wide_resnet50_2(), "pre/coffee.png/v2"),
        ("resnet50_dilated", "resnet50", lambda: tv.resnet50(replace_stride_with_dilation=[False, True, True]),
         "pre/rocket.jpg/v1"),
        ("resnet20", "resnet20", lambda: CifarResNet(3, "A"), "pre/chelsea.png/stretch32"),
        ("resnet20_optB", "resnet20", lambda: CifarResNet(3, "B"), "pre/chelsea.png/stretch32"),
        ("resnet20_optC", "resnet20", lambda: CifarResNet(3, "C"), "pre/chelsea.png/stretch32"),
        ("plain20", "plain20", lambda: CifarResNet(3, residual=False), "pre/chelsea.png/stretch32"),
    ]
    with torch.no_grad():
        for case, arch, build, inp in models:
            m = set_det_weights(build())
            y = m(tensors[inp].unsqueeze(0))[0]
            tensors[f"logits/{case}"] = y.contiguous()
            manifest["models"].append({"case": case, "arch": arch, "input": inp,
                                       "params": sum(p.numel() for p in m.parameters())})
            print(f"{case:18s} logits rms {y.pow(2).mean().sqrt():.3f} max {y.abs().max():.3f}")

    # Two SGD steps in train mode (batch statistics, running-stat updates, nesterov momentum,
    # weight decay): our optimizer and BatchNorm must land on the same numbers.
    for opt_name, make_opt in [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05)),
    ]:
        m = set_det_weights(CifarResNet(3, "A")).train()
        x0 = tensors["pre/chelsea.png/stretch32"]
        x = torch.stack([x0, x0.flip(-1), x0.flip(-2), -x0])
        y = torch.tensor([3, 5, 0, 9])
        opt = make_opt(m.parameters())
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sd = m.state_dict()
        for k in ["conv1.weight", "bn1.running_mean", "bn1.running_var", "layer3.2.bn2.weight", "fc.weight", "fc.bias"]:
            tensors[f"train/{opt_name}/{k}"] = sd[k].detach().clone().contiguous()
        tensors[f"train/{opt_name}/loss"] = torch.tensor(losses, dtype=torch.float32)
        print(f"train {opt_name}: losses {losses}")

    # Real torch.save files, and the same weights as safetensors.
    m = set_det_weights(CifarResNet(3, "A"))
    torch.save(m.state_dict(), FIX / "resnet20_cifar.pth")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, FIX / "resnet20_cifar.safetensors")

    # A .pth whose pickle calls os.system: loading it must fail without running anything.
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/resnet_pwned",))

    torch.save({"conv1.weight": Evil()}, FIX / "evil.pth")

    save_file(tensors, FIX / "reference.safetensors")
    (FIX / "reference.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print("wrote", FIX)


def roundtrip(resnet_bin: str):
    """Our safetensors export must load into torchvision with strict=True and give the same logits."""
    tv = torchvision.models
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        for name in ["resnet18", "resnet50", "resnext50_32x4d"]:
            m = set_det_weights(getattr(tv, name)())
            pth, st = Path(d) / f"{name}.pth", Path(d) / f"{name}.safetensors"
            torch.save(m.state_dict(), pth)
            subprocess.run([resnet_bin, "convert", "--model", name, str(pth), str(st)], check=True)
            from safetensors.torch import load_file
            m2 = getattr(tv, name)()
            m2.load_state_dict(load_file(str(st)), strict=True)
            m2.eval()
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            diff = (m(x) - m2(x)).abs().max().item()
            print(f"roundtrip {name}: strict load ok, max |dlogit| = {diff}")
            assert diff == 0.0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "roundtrip":
        roundtrip(sys.argv[2])
    else:
        main()
