"""Exact ROC AUC."""

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
