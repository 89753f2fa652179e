"""Ranking metrics shared by extraction, screening, the demo and the benchmarks (numpy only, ties handled)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None (scores a judge could not give); None when none are."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ascending, ties get the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    begin = 0
    while begin < len(values):
        end = begin
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[begin]:
            end += 1
        ranks[order[begin:end + 1]] = (begin + end) / 2 + 1
        begin = end + 1
    return ranks


def auroc(scores, labels) -> float:
    """Probability that a random positive scores above a random negative (Mann-Whitney U)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at_k(scores, labels, k: int) -> float:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].mean()) if k > 0 else float("nan")


def spearman(a, b) -> float:
    ra, rb = average_ranks(np.asarray(a)), average_ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def auroc_interval(scores, labels, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of :func:`auroc` (positives and negatives resampled separately,
    so every resample keeps the class sizes). With a few dozen positives the interval is wide:
    quote it beside the point estimate before reading much into a difference of a few hundredths."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled_labels = np.r_[np.ones(len(positives), dtype=bool), np.zeros(len(negatives), dtype=bool)]
    values = [auroc(np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))],
                    resampled_labels) for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def auroc_by_group(scores, labels, groups) -> dict[str, float]:
    """AUROC of each group of positives against all negatives (e.g. severe vs mild injected rows)."""
    scores, labels, groups = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool), np.asarray(groups)
    by_group = {}
    for group in sorted(set(groups[labels].tolist())):
        keep = ~labels | (groups == group)
        by_group[str(group)] = auroc(scores[keep], labels[keep])
    return by_group
