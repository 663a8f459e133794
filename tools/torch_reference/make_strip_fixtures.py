#!/usr/bin/env python3
"""PIL's numbers for extreme-aspect images (issue 14): 1x60000 and 60000x1 strips.

torchvision's eval transform on a PIL image is `img.resize((w', h'), BILINEAR)` to the
shorter side 256, then `img.crop(...)` at the centre (`TF.resize` + `TF.center_crop`). For a
1x60000 strip the resized image is 256 x 15,360,000: PIL builds all of it (about 16 GB), so
run this on a machine with 20 GB free. It needs only the pinned pillow and numpy of
requirements.txt:

    python tools/torch_reference/make_strip_fixtures.py   # writes tests/fixtures/strip_*.png

The strips' pixels come from a formula that tests/hostile.rs repeats (`strip_pixel`).
"""
from pathlib import Path

import numpy as np
from PIL import Image

FIX = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
N, RESIZE, CROP = 60000, 256, 224


def strip_pixels(n):
    i = np.arange(n, dtype=np.int64)
    return np.stack([(i * 7) % 256, (i * 13 + 50) % 256, (i // 235) % 256], -1).astype(np.uint8)


def resized_size(w, h, size):
    """torchvision's _compute_resized_output_size for an int size."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def center_crop(img, crop):
    """torchvision.transforms.functional.center_crop on a PIL image larger than the crop."""
    w, h = img.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def main():
    px = strip_pixels(N)
    for name, arr in [("strip_1x60000", px[:, None, :]), ("strip_60000x1", px[None, :, :])]:
        img = Image.fromarray(arr, "RGB")
        size = resized_size(img.width, img.height, RESIZE)
        out = center_crop(img.resize(size, Image.BILINEAR), CROP)
        out.save(FIX / f"{name}_crop{CROP}.png", optimize=True)
        print(name, img.size, "->", size, "-> crop", out.size)


if __name__ == "__main__":
    main()
