"""Exact ROC AUC."""

import numpy as np


def roc_auc(labels, scores):
    """Exact ROC AUC (ties count one half). labels {0,1} [n], scores float [n] -> float.

    Mann-Whitney U: (sum of the positives' ranks - P(P+1)/2) / (P * N), with tied scores
    given their average rank. O(n log n); returns nan when a class is missing.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores).reshape(-1)
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average 1-based rank of each run of equal scores.
    run_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    run_ends = np.r_[run_starts[1:], sorted_scores.size]
    run_rank = (run_starts + run_ends + 1) / 2.0
    ranks = np.repeat(run_rank, run_ends - run_starts)
    positive_rank_sum = ranks[labels[order]].sum(dtype=np.float64)
    return float((positive_rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))
