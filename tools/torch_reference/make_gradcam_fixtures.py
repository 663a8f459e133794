#!/usr/bin/env python3
"""Writes tests/fixtures/gradcam.safetensors: pytorch-grad-cam's Grad-CAM maps of the photos.

    python tools/torch_reference/make_gradcam_fixtures.py   (the pinned venv + grad-cam==1.5.7)

Per case `MODEL/IMAGE/LAYER/CLASS`: the map before resizing (`[H, W]`), computed by the
library's own hooks and functions: `GradCAM(model, [model.layerK[-1]])`, its activations and
gradients for `ClassifierOutputTarget(CLASS)`, `get_cam_image`, ReLU, `scale_cam_image`.
Weights are make_fixtures.py's deterministic ones; inputs are the PNGs through the eval
transform, so tests/explain.rs runs `resnet explain` end to end.
"""
import sys
from pathlib import Path

import numpy as np
import pytorch_grad_cam
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIX, eval_tf, load_rgb, set_det_weights, write_fixture  # noqa: E402

CASES = [  # model, image, resize, crop, layers
    ("resnet18", "chelsea.png", 256, 224, ["layer4", "layer3"]),
    ("resnet50", "coffee.png", 232, 224, ["layer4", "layer3"]),
]


def grad_cam_map(model, x, layer, target):
    cam = GradCAM(model=model, target_layers=[getattr(model, layer)[-1]])
    outputs = cam.activations_and_grads(x)
    model.zero_grad()
    ClassifierOutputTarget(target)(outputs[0]).backward(retain_graph=True)
    acts = cam.activations_and_grads.activations[0].cpu().numpy()
    grads = cam.activations_and_grads.gradients[0].cpu().numpy()
    m = cam.get_cam_image(x, None, None, acts, grads, eigen_smooth=False)
    m = np.maximum(m, 0)
    m = scale_cam_image(m)[0]
    cam.activations_and_grads.release()
    return m, outputs[0].detach()


def main():
    t, manifest = {}, []
    for model_name, image, resize, crop, layers in CASES:
        model = set_det_weights(getattr(torchvision.models, model_name)())
        x = eval_tf(load_rgb(FIX / image), resize, crop).unsqueeze(0)
        with torch.no_grad():
            logits = model(x)[0]
        top = int(logits.argmax())
        # The top-1 class, and the fifth (a class the image is less likely to be).
        for target in [top, int(logits.argsort(descending=True)[4])]:
            for layer in layers:
                m, out = grad_cam_map(model, x, layer, target)
                assert torch.allclose(out, logits, atol=1e-4)
                if m.max() < 0.99:  # all zero after the ReLU: nothing to compare
                    assert target != top, f"{model_name} {layer}: the top-1 map is flat"
                    print(f"skipped {model_name} {layer} class {target}: flat map")
                    continue
                key = f"{model_name}/{image}/{layer}/{target}"
                t[key] = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
                prob = float(torch.softmax(logits, 0)[target])
                manifest.append({"key": key, "model": model_name, "image": image, "resize": resize, "crop": crop,
                                 "layer": layer, "class": target, "top1": target == top, "probability": prob})
    write_fixture("gradcam", t, manifest, **{"grad-cam": getattr(pytorch_grad_cam, "__version__", "1.5.7")})


if __name__ == "__main__":
    main()
