"""The timing side of bench/compare.sh: our engine, PyTorch and ONNX Runtime on the same models,
sizes and threads, random weights, interleaved in short bursts.

This VM's speed drifts by tens of percent within seconds, so timing one engine for ten seconds
and then the next compares two different machines. Here each round runs a burst of forwards
on every engine in turn (the order rotates), with a pause before each burst so the previous
engine's spinning threads go idle, and a ratio is taken within each round. The reported ratio
is the median over rounds.

Our engine runs in its own process (`resnet bench --stdin`), timing each forward itself.

Usage: python bench/compare.py --ours target/release/resnet --model resnet50,resnet18 \
           --batch 1,8 --threads 2 --rounds 15 --burst 3 --cache DIR
Prints one JSON line per model, batch and engine (median, min and max over all timed
forwards), and one per model and batch with the per-round ratios.
"""
import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision


class Ours:
    """`resnet bench --stdin`: asked for N forwards, answers with their times."""

    def __init__(self, exe, model, batch, threads, size):
        self.p = subprocess.Popen(
            [exe, "bench", "--stdin", "--model", model, "--batch", str(batch), "--threads", str(threads),
             "--size", str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.p.stdout.readline().strip() != "ready":
            raise SystemExit(f"{exe} bench --stdin did not start")

    def burst(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True, help="the resnet binary")
    p.add_argument("--model", default="resnet50,resnet18")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--burst", type=int, default=3, help="forwards per engine per round")
    p.add_argument("--pause", type=float, default=0.25, help="seconds before each burst")
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
            ours = Ours(a.ours, name, batch, a.threads, a.size)

            def pytorch(n):
                with torch.inference_mode():
                    return timed(lambda: model(x), n)

            engines = {
                "fast": ours.burst,
                "onnxruntime": lambda n: timed(lambda: sess.run(None, {"x": xn}), n),
                "pytorch": pytorch,
            }
            for run in engines.values():  # warm-up
                run(2)
            times = {e: [] for e in engines}
            rounds = []
            order = list(engines)
            for r in range(a.rounds):
                medians = {}
                for e in order[r % 3:] + order[:r % 3]:
                    time.sleep(a.pause)
                    t = engines[e](a.burst)
                    times[e] += t
                    medians[e] = statistics.median(t)
                rounds.append(medians)
            ours.close()
            for engine, t in times.items():
                t.sort()
                print(json.dumps({"model": name, "engine": engine, "batch": batch, "size": a.size,
                                  "threads": a.threads, "median_ms": statistics.median(t),
                                  "min_ms": t[0], "max_ms": t[-1]}), flush=True)
            print(json.dumps({"model": name, "batch": batch, "ratios": {
                "onnxruntime": [r["fast"] / r["onnxruntime"] for r in rounds],
                "pytorch": [r["fast"] / r["pytorch"] for r in rounds]}}), flush=True)


if __name__ == "__main__":
    main()
