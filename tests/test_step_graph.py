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
# What the executor may schedule per step under --xla with the fused table ops, by (ranks,
# compress): each op costs the host microseconds, more than most of them cost the GPU. An
# XLA-compiled function's call counts one; inputs, constants and no-ops are not counted.
# (2026-12-04: 17, 25, 45 and 49; before the loss and the bookkeeping compiled, ~75 on one.)
MAX_STEP_OPS = {(1, 0): 20, (1, 1): 28, (2, 0): 48, (2, 1): 52}
NOT_COUNTED = {"Placeholder", "Const", "NoOp", "Identity"}


@pytest.mark.parametrize("num_ranks, amp, compress, xla, fused", [
    *[(n, *flags, 1) for n in (1, 2) for flags in [(0, 0, 0), (1, 0, 1), (1, 1, 0), (0, 1, 1)]],
    (1, 1, 0, 1, 0), (2, 1, 0, 1, 0)])  # fused 0: TF's ops for the table
def test_step_graph(tmp_path, num_ranks, amp, compress, xla, fused):
    out = tmp_path / "ops.json"
    horovodrun(num_ranks, WORKER, out, amp, compress, xla, fused)
    traced = json.load(open(out))
    ops = {(op, dtype) for op, dtype in traced["ops"]}
    names = {op for op, _ in ops}
    assert not names & FORBIDDEN, names & FORBIDDEN
    # --xla: the bottom MLP + concat and the interaction + top MLP compile, forward and
    # backward; with TF's ops for the table, so do its gather + cast and its update's scaling
    # where their shapes are static (one rank, no compress).
    xla_functions = traced["xla_functions"]
    compiled = {(kind, part) for kind in ("__forward_", "__backward_")
                for part in ("bottom_mlp_and_vectors_", "interact_and_top_mlp_", "gather_rows_",
                             "objective_and_mean_loss_")  # public methods' names
                if any(kind + part in name for name in xla_functions)}
    table_compiled = xla and not fused and num_ranks == 1 and not compress
    assert len(compiled) == (8 if table_compiled else 6 if xla else 0), xla_functions
    assert any("scaled_gradient" in name
               for name in xla_functions) == table_compiled, xla_functions
    # --xla: the loss compiles (above) and so do the step's bookkeeping and dense update.
    assert any("__inference_bookkeeping_and_dense_update_" in name
               for name in xla_functions) == xla, xla_functions
    table_ops = {"TableGather", "TableSgdUpdate", "ResourceGather", "ResourceScatterSub"}
    assert names & table_ops == ({"TableGather", "TableSgdUpdate"} if fused
                                 else {"ResourceGather", "ResourceScatterSub"}), names & table_ops
    if xla and fused:
        counted = [op for op in traced["step_ops"] if op not in NOT_COUNTED]
        assert len(counted) <= MAX_STEP_OPS[num_ranks, compress], sorted(counted)
    horovod = {op for op in names if op.startswith("Horovod")}
    if num_ranks == 1:
        assert horovod == set(), horovod  # one rank: a local gather, no allreduce, no flag
        return
    assert {"HorovodAlltoall", "HorovodGroupedAllreduce"} <= horovod, horovod
    assert ("HorovodAllreduce" in horovod) == bool(amp)  # the AMP overflow flag
    alltoall = {dtype for op, dtype in ops if op == "HorovodAlltoall"}
    # Keys cross as int64; vectors and their gradients as float16 under AMP, else float32.
    assert alltoall == {"int64", "float16" if amp else "float32"}, alltoall
