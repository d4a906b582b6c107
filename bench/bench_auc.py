"""Time of metrics.roc_auc, the exact AUC of every evaluation (rank 0 computes it).

    python3 -m bench.bench_auc [--samples=10000000] [--positive_rate=0.03]
"""

import argparse
import os
import time

import numpy as np

import metrics


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--positive_rate", type=float, default=0.03)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = rng.random(args.samples).astype(np.float32)
    labels = rng.random(args.samples) < args.positive_rate
    for name, values in [("uniform float32", scores), ("rounded to 1e-3", np.round(scores, 3))]:
        start = time.perf_counter()
        metrics.roc_auc(labels, values)
        print(f"{name:16s} {args.samples:,} samples: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
