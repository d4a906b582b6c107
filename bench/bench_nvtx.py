"""What trainer.Phases costs per range when no profiler is attached (nsys absent), and
without the nvtx package.

    python3 -m bench.bench_nvtx [--ranges=1000000]

Prints microseconds per `with phases(name):` (a push and a pop), best of 5 rounds. A step of
the training loop opens two ranges (input, step), plus one per log line.
"""

import argparse
import os
import time

import trainer


def per_range_us(phases, ranges):
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ranges):
            with phases("step"):
                pass
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / ranges


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranges", type=int, default=1_000_000)
    args = parser.parse_args()
    assert "NVTX_INJECTION64_PATH" not in os.environ, "unset NVTX_INJECTION64_PATH: no tool"
    with_nvtx = trainer.Phases()
    assert with_nvtx._domain is not None, "the nvtx package is not installed"
    without = trainer.Phases()
    without._domain = None  # as without the package
    print(f"nvtx installed, no tool attached: {per_range_us(with_nvtx, args.ranges):.3f} us "
          f"per range")
    print(f"nvtx not installed:               {per_range_us(without, args.ranges):.3f} us "
          f"per range")


if __name__ == "__main__":
    main()
