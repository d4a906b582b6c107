"""Tools beside the benchmark, run from the repository root as modules: `python -m
tools.trace_summary` (a profiler trace per step), `python -m tools.step_model` (the N-GPU step
predicted from one GPU's share)."""
