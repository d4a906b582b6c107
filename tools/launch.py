"""The horovodrun command line of the tests and the benchmarks, built in one place."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def horovodrun(num_ranks, *program, gloo=False, wrapper=False):
    """-> argv running program (e.g. sys.executable, a script, its arguments) on num_ranks local
    ranks: the horovodrun beside this Python; gloo: Gloo collectives (CPU ranks); wrapper: each
    rank through hvd_wrapper.sh (one GPU per rank)."""
    return [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(num_ranks),
            *(["--gloo"] if gloo else []), "-H", f"localhost:{num_ranks}",
            *([os.path.join(ROOT, "hvd_wrapper.sh")] if wrapper else []), *map(str, program)]
