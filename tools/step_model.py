"""Predicted ms/iter of the tf backend on N GPUs, from one GPU's measurement plus the exchange.

    python3 -m tools.step_model PER_GPU_JSON [--gpus=8] [--global_batch=65536]
                                [--link_gb_s=450,225] [--latency_us=30]

PER_GPU_JSON: `bench_gpu.py configs --batch=B/N --vocab_sizes=<criteo_tb / N per feature>` on one
GPU: each configuration at one GPU's share of the N-GPU job (its local batch, and the rows its
shard holds; the gather then touches as many rows as one of N owners does). The model adds
what that run lacks, the collectives of the N-GPU step, each as latency + bytes / link rate:
  - keys to their owners: hvd.alltoall of K int64 keys (K = B/N * 26, or the rank's unique
    keys under --compress: their expected number for the uniform synthetic ids);
  - vectors back, and their gradients to the owners: two hvd.alltoall of K x 128 values
    (fp16 under --amp, else fp32);
  - the dense gradients: one grouped allreduce (ring: 2 (N - 1) / N of their fp32 bytes);
  - under --amp, the finiteness flag: one scalar allreduce.
Of an alltoall's bytes, (N - 1) / N leave the GPU. The link rate is per GPU and direction
(NVLink 4 on an H200 HGX board: 18 links x 25 GB/s = 450 GB/s; NCCL reaches only part of it,
hence a second, lower rate). Not modelled: overlap of the collectives with compute (none is
assumed), the extra exchange ops' launch cost on the host, and that one rank without
--compress compiles the gather with its cast under --xla while N ranks run TF's kernels
(bench_gpu.py parts: 1.02 vs 1.71 ms at 1.7M rows, so about +0.09 ms at one eighth).
"""

import argparse
import inspect
import json
import os

import numpy as np


import data_format as fmt

DIM = 128


def dense_parameters():
    """Weights and biases of model.DLRM's default MLPs (the interaction's 479 outputs padded
    to 480 feed the top MLP)."""
    import model
    defaults = inspect.signature(model.DLRM).parameters
    bottom = [fmt.NUM_DENSE, *defaults["bottom_mlp"].default]
    top = [480, *defaults["top_mlp"].default]
    return sum(a * b + b for widths in (bottom, top) for a, b in zip(widths[:-1], widths[1:]))


def expected_unique(local_batch, vocab_sizes):
    """Expected distinct keys in a batch of uniform ids: sum_f v_f (1 - (1 - 1/v_f)^B)."""
    v = np.asarray(vocab_sizes, np.float64)
    return float(np.sum(v * -np.expm1(local_batch * np.log1p(-1.0 / v))))


def collectives(flags, gpus, global_batch, params):
    """[(name, bytes leaving one GPU)] of one training step on `gpus` ranks."""
    local_batch = global_batch // gpus
    keys = local_batch * fmt.NUM_CATEGORICAL
    if "--compress" in flags:
        keys = expected_unique(local_batch, fmt.CRITEO_TB_VOCAB_SIZES)
    vector_bytes = 2 if "--amp" in flags else 4
    leaving = (gpus - 1) / gpus
    steps = [("alltoall keys", keys * 8 * leaving),
             ("alltoall vectors", keys * DIM * vector_bytes * leaving),
             ("alltoall vector gradients", keys * DIM * vector_bytes * leaving),
             ("allreduce dense gradients", 2 * leaving * params * 4)]
    if "--amp" in flags:
        steps.append(("allreduce finiteness flag", 4.0))
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("per_gpu_json", help="bench_gpu.py configs' JSON at one GPU's share")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--global_batch", type=int, default=65536)
    parser.add_argument("--link_gb_s", default="450,225",
                        help="link rates per GPU and direction, GB/s (comma-separated)")
    parser.add_argument("--latency_us", type=float, default=30.0, help="per collective")
    args = parser.parse_args()
    rates = [float(r) for r in args.link_gb_s.split(",")]
    params = dense_parameters()
    rows = [row for row in json.load(open(args.per_gpu_json)) if "failed" not in row]
    print(f"{args.gpus} GPUs, global batch {args.global_batch}, {params:,} dense parameters, "
          f"{args.latency_us:g} us per collective")
    header = " | ".join(f"{r:g} GB/s: exchange ms, ms/iter, M samples/s" for r in rates)
    print(f"| configuration | one GPU's share ms | {header} |")
    out = []
    for row in rows:
        steps = collectives(row["flags"].split(), args.gpus, args.global_batch, params)
        cells, predicted = [], {}
        for rate in rates:
            exchange = sum(args.latency_us * 1e-3 + nbytes / (rate * 1e9) * 1e3
                           for _, nbytes in steps)
            ms = row["ms_per_iteration"] + exchange
            predicted[rate] = {"exchange_ms": exchange, "ms_per_iteration": ms,
                               "samples_per_second": args.global_batch / ms * 1e3}
            cells.append(f"{exchange:.2f}, {ms:.2f}, {args.global_batch / ms / 1e3:.2f}")
        print(f"| {row['config']} | {row['ms_per_iteration']:.2f} | " + " | ".join(cells) + " |")
        out.append({"config": row["config"], "per_gpu_ms": row["ms_per_iteration"],
                    "bytes_per_gpu": dict(steps), "predicted": predicted})
    return out


if __name__ == "__main__":
    main()
