"""split_bin.py against `cp` of the same raw file on the same disk, side by side.

    python3 -m bench.bench_split WORK_DIR [--gigabytes=4] [--repeats=3]

Generates a synthetic raw file of the given size in WORK_DIR (once), then alternates
`cp RAW WORK_DIR/copy.bin` and `split_bin.split(RAW, WORK_DIR/split)`, removing each
output after its run, and prints the best time of each and their ratio.
"""

import argparse
import os
import shutil
import subprocess
import time

import data_format as fmt
import split_bin
import synthetic_data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir")
    parser.add_argument("--gigabytes", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    vocab = fmt.scaled_vocab_sizes()
    num_samples = int(args.gigabytes * 1e9) // fmt.RAW_BYTES_PER_SAMPLE
    raw = os.path.join(args.work_dir, f"raw_{num_samples}.bin")
    if not os.path.exists(raw):
        synthetic_data.write_raw(raw, 0, num_samples, vocab, seed=0)
    copy, out = os.path.join(args.work_dir, "copy.bin"), os.path.join(args.work_dir, "split")
    times = {"cp": [], "split_bin": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(["cp", raw, copy], check=True)
        times["cp"].append(time.perf_counter() - start)
        os.remove(copy)
        start = time.perf_counter()
        split_bin.split(raw, out, vocab, overwrite=True, progress_stream=None)
        times["split_bin"].append(time.perf_counter() - start)
        shutil.rmtree(out)
    size = os.path.getsize(raw)
    for name, values in times.items():
        print(f"{name:10s} best {min(values):7.3f} s  ({size / min(values) / 1e9:5.2f} GB/s)  "
              f"all {[round(v, 3) for v in values]}")
    print(f"ratio split_bin / cp = {min(times['split_bin']) / min(times['cp']):.2f} "
          f"({size / 1e9:.2f} GB input)")


if __name__ == "__main__":
    main()
