"""Where the time of a profiled run goes: on the GPU, kernels by total time and how busy the
GPU was; on the host, the TensorFlow ops the executor ran per step, by type.

    python -m tools.trace_summary PROFILE_DIR [--steps=10] [--top=25] [--json=OUT]

PROFILE_DIR is main.py's --profile_dir (the newest *.xplane.pb under it is read). Prints, all
per step (--steps: the number of steps traced):
- for the GPU's planes: the traced window, the time some kernel or copy ran (the union over
  streams), and per kernel name the count and the time;
- for the host: the ops TensorFlow's executor ran on its tf_Compute threads (an XLA cluster is
  one op, _XlaRun), the time some op ran (the union over threads) and their summed time, and per
  op type the count and the time. Each op costs the executor its launch on the host whatever
  its size: their count is the step's fixed cost.
Needs only TensorFlow's protobuf modules (runs on a CPU machine too; a CPU run has no GPU part).
"""

import argparse
import collections
import glob
import json
import os

from tensorflow.tsl.profiler.protobuf import xplane_pb2


def load_space(profile_dir):
    paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise SystemExit(f"trace_summary.py: error: no *.xplane.pb under {profile_dir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    return paths[-1], space


def device_events(space):
    """-> [(name, start_ps, end_ps)] of every kernel and copy on the GPU planes."""
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            base_ps = line.timestamp_ns * 1000
            for event in line.events:
                start = base_ps + event.offset_ps
                name = plane.event_metadata[event.metadata_id].name
                events.append((name, start, start + event.duration_ps))
    return events


def executor_ops(space):
    """-> [(op type, start_ps, end_ps)] of every op TensorFlow's executor ran on the host's
    tf_Compute threads: events named "op name:op type" (ExecutorState::Process and the other
    C++ scopes around them left out)."""
    ops = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            base_ps = line.timestamp_ns * 1000
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue
                start = base_ps + event.offset_ps
                ops.append((name.rsplit(":", 1)[1], start, start + event.duration_ps))
    return ops


def busy_ps(events):
    """Length of the union of the events' intervals."""
    total, end = 0, None
    for _, start, stop in sorted(events, key=lambda e: e[1]):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def summarize(events, steps=1, top=25):
    """[(name, start_ps, end_ps)] of `steps` steps -> per step: the window they span, the time
    some event ran (busy), their summed time, their count, and the `top` names by time."""
    start = min(e[1] for e in events)
    stop = max(e[2] for e in events)
    by_name = collections.defaultdict(lambda: [0, 0])
    for name, begin, end in events:
        by_name[name][0] += 1
        by_name[name][1] += end - begin
    ranked = sorted(by_name.items(), key=lambda item: -item[1][1])
    return {
        "window_ms_per_step": (stop - start) / 1e9 / steps,
        "busy_ms_per_step": busy_ps(events) / 1e9 / steps,
        "summed_ms_per_step": sum(v[1] for v in by_name.values()) / 1e9 / steps,
        "events_per_step": len(events) / steps,
        "top": [{"name": name, "count_per_step": count / steps,
                 "ms_per_step": ps / 1e9 / steps} for name, (count, ps) in ranked[:top]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile_dir")
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    path, space = load_space(args.profile_dir)
    gpu, ops = device_events(space), executor_ops(space)
    if not gpu and not ops:
        raise SystemExit(f"trace_summary.py: error: {path} has neither GPU events nor "
                         f"executor ops")
    summary = {"gpu": summarize(gpu, args.steps, args.top) if gpu else None,
               "executor": summarize(ops, args.steps, args.top) if ops else None}
    print(f"{path}: per step over {args.steps} steps")
    for part, label, what in [("gpu", "GPU", "kernels and copies"),
                              ("executor", "host executor", "ops")]:
        if summary[part] is None:
            print(f"{label}: no events" + (" (no GPU, or CUPTI was not found)"
                                           if part == "gpu" else ""))
            continue
        row = summary[part]
        print(f"{label}: window {row['window_ms_per_step']:.3f} ms, busy "
              f"{row['busy_ms_per_step']:.3f} ms, summed {row['summed_ms_per_step']:.3f} ms, "
              f"{row['events_per_step']:.0f} {what}")
        print("  ms/step  count  name")
        for top in row["top"]:
            print(f"  {top['ms_per_step']:7.3f}  {top['count_per_step']:5.1f}  {top['name'][:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)

if __name__ == "__main__":
    main()
