"""DLRM dot interaction as a custom TensorFlow op (CPU kernel; GPU kernel in CUDA builds).

    dot_interact(features [B, F, D]) -> [B, D + F*(F-1)/2 padded with zeros to a multiple of 8]

Row b of the output: features[b, 0, :], then features[b, i] . features[b, j] for the strict
lower triangle in row-major order (1,0), (2,0), (2,1), (3,0), ..., then zeros: the layout of
model.dot_interaction. dtypes: float16, bfloat16, float32 (CPU and GPU), float64 (CPU only).
The gradient (w.r.t. the whole input, row 0's pass-through included) is the op
DotInteractGrad, registered below.

Build first (see custom_interact/README.md): `make -C custom_interact` (CUDA build where nvcc
is found, else CPU-only; `CUDA=0` forces CPU-only).
"""

import os

import tensorflow as tf

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build",
                       "_dot_interact_ops.so")
BUILD_COMMAND = f"make -C {os.path.dirname(os.path.abspath(__file__))}"

_ops = None


def load_ops(library=LIBRARY):
    """Loads the op library once; raises ImportError naming the build command if it is missing."""
    global _ops
    if _ops is None:
        if not os.path.exists(library):
            raise ImportError(f"custom_interact: {library} is not built; run `{BUILD_COMMAND}` "
                              "(add CUDA=0 for a CPU-only build)")
        _ops = tf.load_op_library(library)
    return _ops


def dot_interact(features):
    """[B, F, D] float16/bfloat16/float32/float64 -> [B, W] of the same dtype (layout above)."""
    return load_ops().dot_interact(features)


def dot_interact_grad(features, grad_output):
    """features [B, F, D], grad_output [B, W] -> gradient w.r.t. features, [B, F, D]."""
    return load_ops().dot_interact_grad(features, grad_output)


@tf.RegisterGradient("DotInteract")
def _dot_interact_gradient(op, grad):
    return dot_interact_grad(op.inputs[0], grad)
