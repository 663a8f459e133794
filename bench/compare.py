"""PyTorch and ONNX Runtime side of bench/compare.sh: the same models, sizes and threads as
`resnet bench`, random weights, median/min/max per batch, one JSON line per case.

Usage: python bench/compare.py --model resnet50,resnet18 --batch 1,8 --threads 2 --iters 20 --cache DIR
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision


def timed(fn, iters):
    for _ in range(2):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return sorted(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet50,resnet18")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "resnet-bench"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name in a.model.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        onnx_path = cache / f"{name}-{a.size}.onnx"
        if not onnx_path.exists():
            x = torch.randn(1, 3, a.size, a.size)
            torch.onnx.export(model, (x,), str(onnx_path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        for batch in [int(b) for b in a.batch.split(",")]:
            x = torch.randn(batch, 3, a.size, a.size)
            xn = x.numpy()
            with torch.inference_mode():
                pt = timed(lambda: model(x), a.iters)
            ox = timed(lambda: sess.run(None, {"x": xn}), a.iters)
            for engine, t in (("pytorch", pt), ("onnxruntime", ox)):
                print(json.dumps({"model": name, "engine": engine, "batch": batch, "size": a.size,
                                  "threads": a.threads, "median_ms": statistics.median(t),
                                  "min_ms": t[0], "max_ms": t[-1]}), flush=True)


if __name__ == "__main__":
    main()
