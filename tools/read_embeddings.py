#!/usr/bin/env python3
"""Reads a `resnet embed --format parquet` file with pandas (pyarrow), as a user would.

    python tools/read_embeddings.py EMB.parquet      # pandas==2.3.3 pyarrow==22.0.0

Prints the schema, the shape, and each image's nearest other image by cosine similarity,
computed with NumPy, so the numbers can be checked against `resnet similar`.
"""
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def main(path):
    print(pq.read_schema(path))
    df = pd.read_parquet(path)
    x = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    print(f"{len(df)} images, {x.shape[1]} values each")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    for i, row in enumerate(sim):
        j = int(row.argmax())
        print(f"{row[j]:.4f}  {df['image'][i]}  {df['image'][j]}")


if __name__ == "__main__":
    main(sys.argv[1])
