"""The Python equivalent of `resnet classify --model resnet50 --weights FILE IMAGE`, for
bench/compare.sh's start-to-result timing: import, load weights, preprocess, forward, print top-5."""
import sys

import torch
import torchvision
from PIL import Image
from torchvision.models import ResNet50_Weights

weights_file, image = sys.argv[1], sys.argv[2]
model = torchvision.models.resnet50()
model.load_state_dict(torch.load(weights_file, weights_only=True))
model.eval()
x = ResNet50_Weights.IMAGENET1K_V1.transforms()(Image.open(image).convert("RGB")).unsqueeze(0)
with torch.inference_mode():
    p = model(x).softmax(1)[0]
labels = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
for prob, idx in zip(*p.topk(5)):
    print(f"{100 * prob:6.2f}%  {labels[idx]} ({idx})")
