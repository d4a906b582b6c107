"""The traced train step: no op that needs host memory or a data-dependent host decision in the
embedding exchange, no collective on one rank, fp16 vectors across the exchange under AMP."""

import json
import os

import pytest

from conftest import horovodrun

WORKER = os.path.join(os.path.dirname(__file__), "step_graph_worker.py")
# InvertPermutation has a host-memory kernel; Bincount's output size depends on the data;
# TopKV2 is what tf.argsort traces to (a sort where a counting pass does); PyFunc runs Python;
# a tf.cond (If, lowered to Switch/Merge) copies its predicate to the host and waits for it.
FORBIDDEN = {"InvertPermutation", "Bincount", "DenseBincount", "TopKV2", "PyFunc",
             "EagerPyFunc", "If", "StatelessIf", "Switch"}


@pytest.mark.parametrize("num_ranks", [1, 2])
@pytest.mark.parametrize("amp, compress, xla", [(0, 0, 0), (1, 0, 1), (1, 1, 0), (0, 1, 1)])
def test_step_graph(tmp_path, num_ranks, amp, compress, xla):
    out = tmp_path / "ops.json"
    horovodrun(num_ranks, WORKER, out, amp, compress, xla)
    traced = json.load(open(out))
    ops = {(op, dtype) for op, dtype in traced["ops"]}
    names = {op for op, _ in ops}
    assert not names & FORBIDDEN, names & FORBIDDEN
    # --xla: the bottom MLP + concat and the interaction + top MLP compile, forward and
    # backward; so do the embedding's gather + cast and its update's scaling where their
    # shapes are static (one rank, no compress).
    xla_functions = traced["xla_functions"]
    compiled = {(kind, part) for kind in ("__forward_", "__backward_")
                for part in ("_bottom_mlp_and_vectors_", "_interact_and_top_mlp_", "_gather_rows_")
                if any(kind + part in name for name in xla_functions)}
    fused = xla and num_ranks == 1 and not compress
    assert len(compiled) == (6 if fused else 4 if xla else 0), xla_functions
    assert any("scaled_gradient" in name for name in xla_functions) == fused, xla_functions
    # --xla: the dense variables' update (and, under AMP, their finiteness check) compile.
    assert any("__inference__sgd_" in name for name in xla_functions) == xla, xla_functions
    assert any("__inference__all_finite_" in name
               for name in xla_functions) == (xla and amp), xla_functions
    assert "ResourceGather" in names and "ResourceScatterSub" in names
    horovod = {op for op in names if op.startswith("Horovod")}
    if num_ranks == 1:
        assert horovod == set(), horovod  # one rank: a local gather, no allreduce, no flag
        return
    assert {"HorovodAlltoall", "HorovodGroupedAllreduce"} <= horovod, horovod
    assert ("HorovodAllreduce" in horovod) == bool(amp)  # the AMP overflow flag
    alltoall = {dtype for op, dtype in ops if op == "HorovodAlltoall"}
    # Keys cross as int64; vectors and their gradients as float16 under AMP, else float32.
    assert alltoall == {"int64", "float16" if amp else "float32"}, alltoall
