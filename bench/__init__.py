"""Benchmark scripts, run from the repository root as modules: `python -m bench.bench_gpu ...`
(figures and their commands in BENCHMARKS.md)."""
