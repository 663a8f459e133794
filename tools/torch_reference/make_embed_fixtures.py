#!/usr/bin/env python3
"""Writes tests/fixtures/embed.safetensors: torchvision's embeddings of the fixture photos.

    python tools/torch_reference/make_embed_fixtures.py     (in the pinned venv, see setup_venv.sh)

Per case `MODEL/IMAGE/LAYER`: `avgpool` is `torch.flatten(model.avgpool(model.layer4(x)), 1)[0]`,
`layerK` the stage's output map `[C, H, W]`. Weights are make_fixtures.py's deterministic ones;
inputs are the PNG photos through the torchvision eval transform, so tests/embed.rs runs
`resnet embed` end to end (decode, resize, crop, normalise, network) against these numbers.
"""
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIX, eval_tf, load_rgb, set_det_weights, write_fixture  # noqa: E402

CASES = [  # model, image, resize, crop, layers
    ("resnet18", "chelsea.png", 256, 224, ["avgpool", "layer3"]),
    ("resnet50", "coffee.png", 232, 224, ["avgpool"]),
]


def stages(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    out = {}
    for k in range(1, 5):
        x = getattr(m, f"layer{k}")(x)
        out[f"layer{k}"] = x
    out["avgpool"] = torch.flatten(m.avgpool(x), 1)
    return out


def main():
    t, manifest = {}, []
    with torch.no_grad():
        for model, image, resize, crop, layers in CASES:
            m = set_det_weights(getattr(torchvision.models, model)())
            x = eval_tf(load_rgb(FIX / image), resize, crop).unsqueeze(0)
            out = stages(m, x)
            for layer in layers:
                key = f"{model}/{image}/{layer}"
                t[key] = out[layer][0].contiguous()
                manifest.append({"key": key, "model": model, "image": image, "resize": resize, "crop": crop,
                                 "layer": layer, "shape": list(t[key].shape)})
    write_fixture("embed", t, manifest)


if __name__ == "__main__":
    main()
