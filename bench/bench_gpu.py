"""DLRM on one GPU: the seed's configurations end to end, and the step's parts beside their floors.

    python3 -m bench.bench_gpu configs --out=DIR [--steps=300] [--embedding=tf|sok]
                                  [--vocab_sizes=criteo_tb] [--batch=65536] [--only=NAME,NAME]
                                  [--extra="--nofused_table_ops ..."]
                                                        main.py runs -> DIR/configs_EMB.{json,md}
    python3 -m bench.bench_gpu scaling --out=DIR [--gpus=1,2,4,8] [--per_gpu_batch=8192]
                                  [--batch=65536] [configs' options]
                                          the configs on N GPUs -> DIR/scaling_EMB.{json,md}
    python3 -m bench.bench_gpu parts --out=DIR                    parts alone -> DIR/parts.{json,md}

configs: one `main.py --use_synthetic_dataset --vocab_sizes=criteo_tb --global_batch_size=65536
--embedding=EMB` run per configuration (by default the full Criteo table, 187.8M x 128 fp32 =
89.5 GiB), each in
its own process; ms/iter and samples/s over the steps after the first (the report's), first-step
time (tracing, XLA compilation, PTX JIT), table start-up time, peak GPU memory at start and at
the end (TF's allocator).

scaling: the same runs under horovodrun -np N ./hvd_wrapper.sh (one GPU per rank; set
NCCL_NVLS_ENABLE=0 on shared machines) for each N of --gpus, at a fixed per-GPU batch (global
N x --per_gpu_batch) and at the fixed global --batch; the speed-up over one GPU at the same
per-GPU batch and at the same global batch, with its efficiency (speed-up / N).

parts: in one process, each part of a step at batch 65536 timed alone beside its floor
(bench/parts.py; needs custom_interact and embedding_ops built).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # name -> main.py flags; the seed's rows first
    "amp xla custom": ["--amp", "--xla", "--custom_interact"],
    "fp32 compress xla custom": ["--compress", "--xla", "--custom_interact"],
    "amp custom": ["--amp", "--custom_interact"],
    "amp xla": ["--amp", "--xla"],
    "amp": ["--amp"],
    "fp32 compress custom": ["--compress", "--custom_interact"],
    "fp32 xla custom": ["--xla", "--custom_interact"],
    "amp compress xla custom": ["--amp", "--compress", "--xla", "--custom_interact"],
}
BATCH = 65536  # the seed's global batch
REPORT_KEYS = ["ms_per_iteration", "samples_per_second", "input_ms_per_iteration",
               "launch_ms_per_iteration", "first_step_seconds", "table_seconds",
               "startup_peak_gpu_gib", "peak_gpu_gib"]


def _gib(value):
    return "" if value is None else f"{value:.1f}"  # None: no GPU (a smoke run on CPU ranks)


def launcher(ranks):
    """The command prefix for main.py on `ranks` local ranks: python alone for one, else
    horovodrun with hvd_wrapper.sh (one GPU per rank)."""
    if ranks == 1:
        return [sys.executable]
    return launch.horovodrun(ranks, sys.executable, wrapper=True)


def run_configs(out_dir, steps, names, embedding="tf", vocab_sizes="criteo_tb", batch=BATCH,
                timeout=None, ranks=1, extra=()):
    """extra: main.py flags added to every configuration's (they name the files too)."""
    rows = []
    for name in names:
        stem = os.path.join(out_dir, f"{embedding}_{name.replace(' ', '_')}"
                                     + (f"_np{ranks}_b{batch}" if ranks > 1 else "")
                                     + "".join(f"_{flag.lstrip('-')}" for flag in extra))
        results = stem + ".json"
        cmd = [*launcher(ranks), os.path.join(ROOT, "main.py"), "--use_synthetic_dataset",
               f"--vocab_sizes={vocab_sizes}", f"--global_batch_size={batch}",
               f"--embedding={embedding}",
               f"--early_stop={steps}", f"--log_interval={steps}", "--eval_in_last",
               f"--results_json={results}", *CONFIGS[name], *extra]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as expired:
            returncode = f"timeout {timeout} s"
            stdout, stderr = [(out or b"").decode(errors="replace")
                              for out in (expired.stdout, expired.stderr)]
        with open(stem + ".log", "w") as log:
            log.write(" ".join(cmd) + "\n" + stdout + stderr)
        if returncode != 0:
            print(f"{name}: FAILED ({returncode}): {stderr.strip().splitlines()[-6:]}",
                  flush=True)
            rows.append({"config": name, "failed": returncode})
            continue
        report = json.load(open(results))
        row = {"config": name, "embedding": embedding,
               "flags": " ".join(CONFIGS[name] + list(extra)),
               "ranks": ranks, "global_batch": batch, "wall_seconds": time.perf_counter() - start,
               **{key: report[key] for key in REPORT_KEYS}}
        rows.append(row)
        print(f"{name}: {row['ms_per_iteration']:.2f} ms/iter "
              f"{row['samples_per_second'] / 1e6:.2f}M samples/s, host launch "
              f"{row['launch_ms_per_iteration']:.2f} ms/iter, first step "
              f"{row['first_step_seconds']:.1f} s, peak {_gib(row['peak_gpu_gib'])} GiB",
              flush=True)
    table = ["| configuration | ms/iter | M samples/s | host input ms | host launch ms | "
             "first step s | table init s | peak GiB at start | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "failed" in row:
            table.append(f"| {row['config']} | failed | | | | | | | |")
            continue
        table.append(f"| {row['config']} | {row['ms_per_iteration']:.2f} | "
                     f"{row['samples_per_second'] / 1e6:.2f} | "
                     f"{row['input_ms_per_iteration']:.2f} | "
                     f"{row['launch_ms_per_iteration']:.2f} | {row['first_step_seconds']:.1f} | "
                     f"{row['table_seconds']:.1f} | {_gib(row['startup_peak_gpu_gib'])} | "
                     f"{_gib(row['peak_gpu_gib'])} |")
    return rows, table


def run_scaling(out_dir, steps, names, gpus, per_gpu_batch, global_batch, **options):
    """Each configuration on each number of GPUs, at a fixed per-GPU batch and at a fixed
    global batch -> (rows, markdown table with the speed-ups over 1 GPU and efficiencies)."""
    rows = []
    for ranks in gpus:
        for batch in sorted({per_gpu_batch * ranks, global_batch}):
            rows += run_configs(out_dir, steps, names, batch=batch, ranks=ranks, **options)[0]
    table = ["| configuration | GPUs | global batch | ms/iter | M samples/s | speed-up, same "
             "per-GPU batch | speed-up, same global batch | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    done = [row for row in rows if "failed" not in row]

    def speedup(row, one_gpu_batch):
        """-> "x (efficiency)" against the 1-GPU run of this configuration at one_gpu_batch."""
        found = [r for r in done if r["config"] == row["config"] and r["ranks"] == 1
                 and r["global_batch"] == one_gpu_batch]
        if not found:
            return ""
        x = row["samples_per_second"] / found[0]["samples_per_second"]
        return f"{x:.2f} ({x / row['ranks']:.0%})"
    for row in rows:
        if "failed" in row:
            table.append(f"| {row['config']} | failed | | | | | | |")
            continue
        table.append(f"| {row['config']} | {row['ranks']} | {row['global_batch']} | "
                     f"{row['ms_per_iteration']:.2f} | {row['samples_per_second'] / 1e6:.2f} | "
                     f"{speedup(row, row['global_batch'] // row['ranks'])} | "
                     f"{speedup(row, row['global_batch'])} | {_gib(row['peak_gpu_gib'])} |")
    return rows, table


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["configs", "scaling", "parts"])
    parser.add_argument("--out", required=True, help="directory for the JSON, markdown and logs")
    parser.add_argument("--steps", type=int, default=300, help="configs: steps per run")
    parser.add_argument("--only", default=None, help="configs: comma-separated names")
    parser.add_argument("--timeout", type=float, default=None,
                        help="configs: seconds a run may take before it counts as failed")
    parser.add_argument("--embedding", choices=["tf", "sok"], default="tf",
                        help="configs: main.py's embedding backend")
    parser.add_argument("--vocab_sizes", default="criteo_tb",
                        help="configs: main.py's --vocab_sizes (criteo_tb: the full table)")
    parser.add_argument("--extra", default="", help="configs, scaling: main.py flags added to "
                        "every configuration's, space-separated (e.g. --nofused_table_ops)")
    parser.add_argument("--repeats", type=int, default=20, help="parts: runs per timing loop")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="the batch (configs: main.py's --global_batch_size)")
    parser.add_argument("--rows", type=int, default=None,
                        help="parts: table rows (default the full Criteo table; smoke runs)")
    parser.add_argument("--scores", type=int, default=89_137_319, help="parts: AUC scores")
    parser.add_argument("--gpus", default="1,2,4,8", help="scaling: GPU counts")
    parser.add_argument("--per_gpu_batch", type=int, default=BATCH // 8,
                        help="scaling: the fixed per-GPU batch (the other series: --batch)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = args.only.split(",") if args.only else list(CONFIGS)
    if args.mode == "configs":
        rows, table = run_configs(args.out, args.steps, names, args.embedding,
                                  args.vocab_sizes, args.batch, args.timeout,
                                  extra=args.extra.split())
        stem = os.path.join(args.out, f"configs_{args.embedding}")
    elif args.mode == "scaling":
        rows, table = run_scaling(args.out, args.steps, names,
                                  [int(n) for n in args.gpus.split(",")], args.per_gpu_batch,
                                  args.batch, embedding=args.embedding,
                                  vocab_sizes=args.vocab_sizes, timeout=args.timeout,
                                  extra=args.extra.split())
        stem = os.path.join(args.out, f"scaling_{args.embedding}")
    else:
        from bench import parts  # TensorFlow in this process only here
        rows, table = parts.run_parts(args.repeats, args.batch, args.rows, args.scores)
        stem = os.path.join(args.out, "parts")
    with open(stem + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
