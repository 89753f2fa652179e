"""Ranking metrics: AUROC (ties, bootstrap interval, per group), precision@k, Spearman."""

from __future__ import annotations

import numpy as np
import pytest

from persona_guard.metrics import auroc, auroc_by_group, auroc_interval, precision_at_k, spearman


def test_auroc_counts_ties_half_and_needs_both_classes():
    assert auroc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auroc([1, 3, 1, 2], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert np.isnan(auroc([1, 2], [1, 1]))


def test_auroc_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 6, 60).astype(float), rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert auroc(scores, labels) == pytest.approx(pairwise)


def test_auroc_interval_brackets_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def sample(n_pos, n_neg):
        return np.r_[rng.normal(1, 1, n_pos), rng.normal(0, 1, n_neg)], np.r_[np.ones(n_pos), np.zeros(n_neg)]

    small_scores, small_labels = sample(30, 300)
    low, high = auroc_interval(small_scores, small_labels)
    assert low < auroc(small_scores, small_labels) < high
    assert auroc_interval(small_scores, small_labels) == (low, high)  # seeded
    big_low, big_high = auroc_interval(*sample(300, 3000), resamples=300)
    assert big_high - big_low < (high - low) / 2
    assert all(np.isnan(bound) for bound in auroc_interval([1.0, 2.0], [1, 1]))  # no negatives


def test_auroc_by_group_scores_each_kind_of_positive_against_all_negatives():
    scores = [9, 8, 1.5, 1, 2, 3]
    labels = [1, 1, 1, 0, 0, 0]
    groups = ["severe", "severe", "mild", "benign", "benign", "benign"]
    assert auroc_by_group(scores, labels, groups) == {"mild": pytest.approx(1 / 3), "severe": 1.0}


def test_precision_at_k_and_spearman():
    assert precision_at_k([5, 4, 3, 2], [1, 0, 1, 0], 2) == 0.5
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
