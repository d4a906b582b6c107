"""Run under horovodrun by test_step_graph.py: traces the train step of a tiny DLRM (tf backend)
and writes, on rank 0, every op of its graph and of the functions it calls (branches,
gradients, XLA-compiled parts) with the dtype attribute T, and the functions marked for XLA compilation, to OUT_PATH as JSON.

    python step_graph_worker.py OUT_PATH AMP(0|1) COMPRESS(0|1) XLA(0|1) FUSED_TABLE_OPS(0|1)
"""

import json
import sys

import horovod.tensorflow as hvd
import tensorflow as tf

import dataset
import embedding
import model as dlrm
import trainer as training

hvd.init()
out_path, amp, compress, xla, fused = sys.argv[1], *(flag == "1" for flag in sys.argv[2:6])
if amp:
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
vocab_sizes = [7, 30, 5] + [11] * 23
tables = embedding.create_embedding("tf", vocab_sizes, 8, compress=compress,
                                    vector_dtype=tf.float16 if amp else tf.float32,
                                    fused_table_ops=fused, jit_compile=xla)
net = dlrm.DLRM(tables, vocab_sizes, bottom_mlp=(16, 8), top_mlp=(16, 1), jit_compile=xla)
trainer = training.Trainer(net, training.LearningRateSchedule(0.1, 1, 2, 3), 16 * hvd.size(),
                           loss_scale=training.DynamicLossScale() if amp else None,
                           jit_compile=xla)
features, label = next(iter(dataset.SyntheticDataset(16, vocab_sizes, 1, seed=hvd.rank())))
trainer.build_and_broadcast(features)
graph_def = trainer.train_step.get_concrete_function(features, label).graph.as_graph_def()
nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
ops = sorted({(n.op, tf.as_dtype(n.attr["T"].type).name if "T" in n.attr else "")
              for n in nodes})
xla_functions = sorted(f.signature.name for f in graph_def.library.function
                       if f.attr["_XlaMustCompile"].b)
# The ops TF's executor schedules each step: the step graph's own nodes (a call of an
# XLA-compiled function is one of them; its body runs as one XLA executable).
step_ops = sorted(n.op for n in graph_def.node)
if hvd.rank() == 0:
    json.dump({"ops": ops, "xla_functions": xla_functions, "step_ops": step_ops},
              open(out_path, "w"))
