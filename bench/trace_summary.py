"""Where the GPU time of a profiled run goes: kernels by total time, and how busy the GPU was.

    python bench/trace_summary.py PROFILE_DIR [--steps=10] [--top=25] [--json=OUT]

PROFILE_DIR is main.py's --profile_dir (the newest *.xplane.pb under it is read). Prints, for
the GPU's planes: the traced window, the time some kernel or copy ran (the union over streams),
and per kernel name the count and the time; all per step, with --steps the number of steps
traced. Needs only TensorFlow's protobuf modules (runs on a CPU machine too).
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
    start = min(e[1] for e in events)
    stop = max(e[2] for e in events)
    by_name = collections.defaultdict(lambda: [0, 0])
    for name, begin, end in events:
        by_name[name][0] += 1
        by_name[name][1] += end - begin
    kernels = sorted(by_name.items(), key=lambda item: -item[1][1])
    return {
        "window_ms_per_step": (stop - start) / 1e9 / steps,
        "busy_ms_per_step": busy_ps(events) / 1e9 / steps,
        "kernel_ms_per_step": sum(v[1] for v in by_name.values()) / 1e9 / steps,
        "launches_per_step": len(events) / steps,
        "top": [{"name": name, "count_per_step": count / steps,
                 "ms_per_step": ps / 1e9 / steps} for name, (count, ps) in kernels[:top]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile_dir")
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    path, space = load_space(args.profile_dir)
    events = device_events(space)
    if not events:
        raise SystemExit(f"trace_summary.py: error: {path} has no GPU events (no GPU, or "
                         f"CUPTI was not found)")
    summary = summarize(events, args.steps, args.top)
    print(f"{path}: per step over {args.steps} steps: window "
          f"{summary['window_ms_per_step']:.3f} ms, GPU busy {summary['busy_ms_per_step']:.3f} ms,"
          f" kernel time {summary['kernel_ms_per_step']:.3f} ms, "
          f"{summary['launches_per_step']:.0f} kernels and copies")
    print("  ms/step  count  name")
    for row in summary["top"]:
        print(f"  {row['ms_per_step']:7.3f}  {row['count_per_step']:5.1f}  {row['name'][:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
