"""One switch for XLA, used by the model, the trainer and the tf backend.

    xla.compiled(enabled)(fn) -> fn as tf.function(jit_compile=True) when enabled (one XLA
    executable, forward and, through autodiff, backward), else fn itself (its ops traced
    into the caller's graph).
"""

import tensorflow as tf


def compiled(enabled):
    """-> a decorator: tf.function(jit_compile=True) when enabled, else the identity."""
    return tf.function(jit_compile=True) if enabled else (lambda fn: fn)
