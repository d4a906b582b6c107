"""Exact ROC AUC: numpy (data tools, no TensorFlow) and TensorFlow (on the GPU, in training)."""

import numpy as np


def roc_auc(labels, scores):
    """Exact ROC AUC of float32 scores (ties count one half). labels {0,1} [n], scores [n]
    (cast to float32) -> float; nan when a class is missing.

    AUC = U / (P * N), U = #(positive, negative) pairs ordered right + half the tied ones.
    One int64 sort of (order-preserving score bits << 1 | label) puts, among equal scores,
    the negatives first, so a positive at sorted index i has i - (its index among the
    positives) negatives at or below its score; the tied pairs, counted whole there, are
    halved afterwards from the tied runs (timed by bench/bench_auc.py).
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    # + 0 turns -0.0 into +0.0: equal scores must have equal bits.
    scores = np.asarray(scores, dtype=np.float32).reshape(-1) + np.float32(0)
    bits = scores.view(np.int32).astype(np.int64)
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    negative = bits < 0  # sign-magnitude: flip the magnitude of negatives to sort as floats
    if negative.any():
        bits[negative] ^= 0x7FFFFFFF
    keys = (bits << 1) | labels
    keys.sort()
    positive = (keys & 1).astype(bool)
    u = np.flatnonzero(positive).sum(dtype=np.float64) - num_pos * (num_pos - 1) / 2.0
    sorted_bits = keys >> 1
    tied = np.flatnonzero(sorted_bits[1:] == sorted_bits[:-1])
    if tied.size:
        in_tied_run = np.zeros(keys.size, bool)
        in_tied_run[tied] = in_tied_run[tied + 1] = True
        members = np.flatnonzero(in_tied_run)  # ascending, so their scores are too
        run = np.r_[0, np.cumsum(sorted_bits[members][1:] != sorted_bits[members][:-1])]
        positives_per_run = np.bincount(run, weights=positive[members])
        negatives_per_run = np.bincount(run) - positives_per_run
        u -= 0.5 * float(positives_per_run @ negatives_per_run)
    return u / (num_pos * num_neg)


def roc_auc_tf(labels, scores):
    """Exact ROC AUC (ties count one half) computed by TF ops on the device the inputs live
    on: one sort, one pass over the tied runs. labels {0,1} [n], scores [n] (cast to float32)
    -> float; nan when a class is missing. Call eagerly (it reads two counts to the host).

    Mann-Whitney: AUC = (sum of the positives' ascending ranks - P(P+1)/2) / (P N), a tied run
    of scores at sorted positions [first, last] giving each member the mean rank.
    """
    import tensorflow as tf

    scores = tf.reshape(tf.cast(scores, tf.float32), [-1]) + 0.0  # -0.0 -> +0.0
    positive = tf.reshape(tf.cast(labels, tf.float64), [-1])
    n = int(tf.size(scores))
    num_pos = float(tf.reduce_sum(positive))
    if num_pos == 0 or num_pos == n:
        return float("nan")
    order = tf.math.top_k(scores, k=n, sorted=True).indices                # descending
    sorted_scores = tf.gather(scores, order)
    starts_run = tf.concat([[True], sorted_scores[1:] != sorted_scores[:-1]], 0)
    run = tf.cumsum(tf.cast(starts_run, tf.int32)) - 1                     # [n] run of each
    first = tf.cast(tf.where(starts_run)[:, 0], tf.float64)                # [runs]
    last = tf.concat([first[1:], [float(n)]], 0) - 1.0
    ascending_rank = n - (first + last) / 2.0                              # mean rank, 1-based
    rank_sum = tf.reduce_sum(tf.gather(ascending_rank, run) * tf.gather(positive, order))
    num_neg = n - num_pos
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))
