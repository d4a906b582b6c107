"""DLRM (MLPerf v1 configuration): bottom MLP, model-parallel embeddings, dot interaction, top MLP.

    dense [B, 13] --bottom MLP--> [B, D] -+
                                           +--> [B, 1 + F, D] --interaction--> [B, W] --top MLP--> [B, 1]
    categorical [B, F] --embedding--> [B, F, D]

with W = D + (1+F)*F/2 padded up to a multiple of 8 (128 + 351 + 1 = 480 for Criteo).

Mixed precision: under the Keras policy mixed_float16 the dense layers and the interaction
compute in float16 except the logit layer (float32); the embedding tables stay float32
(their vectors are cast after the lookup); the logits are float32.
"""

import math

import numpy as np
import tensorflow as tf

import xla


def interaction_width(num_features, dim):
    """Output width of dot_interaction: D + F*(F-1)/2 rounded up to a multiple of 8."""
    unpadded = dim + num_features * (num_features - 1) // 2
    return -(-unpadded // 8) * 8


def _lower_triangle_flat_indices(num_features):
    """Flat indices i*F + j of the pairs (1,0), (2,0), (2,1), (3,0), ... of an [F, F] matrix."""
    return np.array([i * num_features + j for i in range(num_features) for j in range(i)],
                    dtype=np.int32)


def dot_interaction(features):
    """Pairwise dot products of the feature vectors, after the bottom-MLP vector.

    [B, F, D] -> [B, D + F*(F-1)/2 padded with zeros to a multiple of 8]

    Output row b: features[b, 0, :], then features[b, i] . features[b, j] for the strict lower
    triangle in row-major order (1,0), (2,0), (2,1), (3,0), ..., then zeros. F and D must be
    static; B may be anything, including 1. The dtype follows the input.
    """
    num_features, dim = features.shape[1], features.shape[2]
    if num_features is None or dim is None:
        raise ValueError(f"dot_interaction needs static F and D, got shape {features.shape}")
    pair_indices = _lower_triangle_flat_indices(num_features)
    gram = tf.matmul(features, features, transpose_b=True)              # [B, F, F]
    flat_gram = tf.reshape(gram, [-1, num_features * num_features])     # [B, F*F]
    pairs = tf.gather(flat_gram, pair_indices, axis=1)                  # [B, F*(F-1)/2]
    padding = interaction_width(num_features, dim) - dim - len(pair_indices)
    output = tf.concat([features[:, 0, :], pairs], axis=1)
    return tf.pad(output, [[0, 0], [0, padding]])


def _dense_layer(units, activation, seed, dtype=None):
    """dtype None: the global Keras policy (mixed_float16 under AMP)."""
    return tf.keras.layers.Dense(
        units,
        activation=activation,
        dtype=dtype,
        kernel_initializer=tf.keras.initializers.GlorotNormal(seed=seed),
        bias_initializer=tf.keras.initializers.RandomNormal(stddev=math.sqrt(1.0 / units),
                                                            seed=seed + 1))


class DLRM(tf.keras.Model):
    """DLRM over an embedding backend of embedding.py.

    Args:
      embedding: an object of embedding.create_embedding (tables for all categorical features).
      vocab_sizes: rows of each categorical feature's table (F = len(vocab_sizes)).
      bottom_mlp: widths of the bottom MLP, ReLU on every layer; the last must equal the
        embedding dim.
      top_mlp: widths of the top MLP, ReLU on all but the last (the logit, width 1).
      interaction: callable [B, 1 + F, D] -> [B, W] with dot_interaction's layout (e.g. the
        custom op custom_interact.dot_interact).
      seed: seed of the dense initialisers (layer k, counted over bottom then top: kernel
        seed + 2k, bias seed + 2k + 1).
      jit_compile: XLA-compile the dense part, forward and backward: the bottom MLP with the
        concat of its output and the vectors, and the interaction with the top MLP (the top MLP alone when `interaction` is not
        dot_interaction, e.g. the custom op, which has no XLA kernel). The embedding lookup
        and its exchange stay outside.

    call((dense float32 [B, 13], categorical int32|int64 [B, F])) -> logits float32 [B, 1]
    """

    def __init__(self, embedding, vocab_sizes, bottom_mlp=(512, 256, 128),
                 top_mlp=(1024, 1024, 512, 256, 1), interaction=dot_interaction, seed=0,
                 jit_compile=False, **kwargs):
        super().__init__(**kwargs)
        if bottom_mlp[-1] != embedding.dim:
            raise ValueError(f"the last bottom MLP width ({bottom_mlp[-1]}) must equal the "
                             f"embedding dim ({embedding.dim})")
        if list(embedding.vocab_sizes) != list(vocab_sizes):
            raise ValueError(f"the embedding's vocab_sizes {list(embedding.vocab_sizes)} differ "
                             f"from the model's {list(vocab_sizes)}")
        if top_mlp[-1] != 1:
            raise ValueError(f"the last top MLP width must be 1 (the logit), got {top_mlp[-1]}")
        self.embedding = embedding
        self.vocab_sizes = list(vocab_sizes)
        self.interaction = interaction
        self.bottom_layers = [_dense_layer(units, "relu", seed + 2 * k)
                              for k, units in enumerate(bottom_mlp)]
        top_seed = seed + 2 * len(bottom_mlp)
        self.top_layers = [_dense_layer(units, "relu", top_seed + 2 * k)
                           for k, units in enumerate(top_mlp[:-1])]
        # The logit layer computes in float32 under AMP too: fp16 logits would quantise the
        # scores (ties in the AUC) and can overflow.
        self.top_layers.append(_dense_layer(top_mlp[-1], None, top_seed + 2 * (len(top_mlp) - 1),
                                            dtype="float32"))
        compiled = xla.compiled(jit_compile)
        self._features = compiled(self.bottom_mlp_and_vectors)
        # dot_interaction compiles with the top MLP; another interaction (the custom op, which
        # has no XLA kernel) runs on its own between the two compiled parts.
        if interaction is dot_interaction:
            self._interaction, self._top = (lambda x: x), compiled(self.interact_and_top_mlp)
        else:
            self._interaction, self._top = interaction, compiled(self.top_mlp)

    def _bottom_mlp(self, dense):
        """[B, 13] -> [B, D]."""
        for layer in self.bottom_layers:
            dense = layer(dense)
        return dense

    def bottom_mlp_and_vectors(self, dense, vectors):
        """dense [B, 13], vectors [B, F, D] -> [B, 1 + F, D]: the bottom MLP's output, then the
        vectors (cast to its dtype; compiled together, the concat costs one pass)."""
        bottom = self._bottom_mlp(dense)
        return tf.concat([bottom[:, tf.newaxis, :], tf.cast(vectors, bottom.dtype)], axis=1)

    def top_mlp(self, interactions):
        """[B, W] -> logits float32 [B, 1]."""
        for layer in self.top_layers:
            interactions = layer(interactions)
        return tf.cast(interactions, tf.float32)

    def interact_and_top_mlp(self, features):
        """[B, 1 + F, D] -> logits float32 [B, 1], with dot_interaction."""
        return self.top_mlp(dot_interaction(features))

    def call(self, inputs, training=False):
        dense, categorical = inputs
        with tf.name_scope("embedding_lookup"):  # the lookup with its exchange
            vectors = self.embedding(categorical)                        # [B, F, D]
        with tf.name_scope("dense"):
            features = self._features(dense, vectors)                    # [B, 1 + F, D]
            return self._top(self._interaction(features))               # [B, 1]

    @property
    def embedding_variables(self):
        """The embedding tables (local shards): updated by embedding.apply_gradients only."""
        return list(self.embedding.variables)

    @property
    def dense_variables(self):
        """Every other trainable variable (data parallel: gradients allreduced)."""
        return self.embedding.exclude_tables(self.trainable_variables)
