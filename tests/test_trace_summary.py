"""tools/trace_summary.py on a hand-made profiler trace: busy time is the union over streams."""

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from tools import trace_summary


def _space():
    """GPU plane, two streams (times in us): stream A: gemm 0-10, gemm 20-30; stream B:
    copy 5-15, scatter 40-45. A host plane's event must be ignored."""
    space = xplane_pb2.XSpace()
    gpu = space.planes.add(name="/device:GPU:0")
    for meta_id, name in enumerate(["gemm", "copy", "scatter"], start=1):
        gpu.event_metadata[meta_id].id = meta_id
        gpu.event_metadata[meta_id].name = name
    stream_a = gpu.lines.add(timestamp_ns=1000)
    stream_b = gpu.lines.add(timestamp_ns=6000)  # 5 us after stream A
    for line, meta_id, start_us, duration_us in [(stream_a, 1, 0, 10), (stream_a, 1, 20, 10),
                                                 (stream_b, 2, 0, 10), (stream_b, 3, 35, 5)]:
        line.events.add(metadata_id=meta_id, offset_ps=start_us * 10**6,
                        duration_ps=duration_us * 10**6)
    host = space.planes.add(name="/host:CPU")
    host.event_metadata[1].name = "train_step"
    host.lines.add(timestamp_ns=0).events.add(metadata_id=1, offset_ps=0, duration_ps=10**12)
    return space


def test_summary_of_a_hand_made_trace(tmp_path):
    run = tmp_path / "plugins" / "profile" / "run"
    run.mkdir(parents=True)
    (run / "host.xplane.pb").write_bytes(_space().SerializeToString())
    _, space = trace_summary.load_space(str(tmp_path))
    events = trace_summary.device_events(space)
    assert len(events) == 4
    summary = trace_summary.summarize(events, steps=2, top=2)
    # window 0-45 us; busy: union of [0,15] (gemm + overlapping copy), [20,30], [40,45] = 30 us
    assert summary["window_ms_per_step"] == pytest.approx(0.045 / 2)
    assert summary["busy_ms_per_step"] == pytest.approx(0.030 / 2)
    assert summary["summed_ms_per_step"] == pytest.approx(0.035 / 2)
    assert summary["events_per_step"] == 2
    assert [row["name"] for row in summary["top"]] == ["gemm", "copy"]
    assert summary["top"][0]["ms_per_step"] == pytest.approx(0.020 / 2)
    assert summary["top"][0]["count_per_step"] == 1


def test_executor_ops_are_the_named_ops_of_the_compute_threads():
    """Host plane (times in us): thread 1 runs a:MatMul 0-10 and b:MatMul 20-25 inside
    ExecutorState::Process scopes; thread 2 (1 us later) c:_XlaRun 4-7; the Python thread's
    train_step and the GPU plane's kernels are not executor ops."""
    space = _space()
    host = next(plane for plane in space.planes if plane.name == "/host:CPU")
    for meta_id, name in [(2, "ExecutorState::Process"), (3, "forward/a:MatMul"),
                          (4, "gradient/b:MatMul"), (5, "cluster_0:_XlaRun")]:
        host.event_metadata[meta_id].name = name
    thread_1 = host.lines.add(name="tf_Compute/1", timestamp_ns=0)
    thread_2 = host.lines.add(name="tf_Compute/2", timestamp_ns=1000)
    for line, meta_id, start_us, duration_us in [(thread_1, 2, 0, 30), (thread_1, 3, 0, 10),
                                                 (thread_1, 4, 20, 5), (thread_2, 5, 3, 3)]:
        line.events.add(metadata_id=meta_id, offset_ps=start_us * 10**6,
                        duration_ps=duration_us * 10**6)
    ops = trace_summary.executor_ops(space)
    assert sorted(ops) == [("MatMul", 0, 10 * 10**6), ("MatMul", 20 * 10**6, 25 * 10**6),
                           ("_XlaRun", 4 * 10**6, 7 * 10**6)]
    summary = trace_summary.summarize(ops, steps=1, top=5)
    # busy: [0,10] (holding [4,7]) and [20,25] = 15 us; summed 10 + 5 + 3 = 18 us
    assert summary["busy_ms_per_step"] == pytest.approx(0.015)
    assert summary["summed_ms_per_step"] == pytest.approx(0.018)
    assert summary["events_per_step"] == 3
    assert [(row["name"], row["count_per_step"]) for row in summary["top"]] == \
        [("MatMul", 2), ("_XlaRun", 1)]


def test_no_trace_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no \\*.xplane.pb under"):
        trace_summary.load_space(str(tmp_path))
