"""The exact per-class threshold search on Dice after blanking (arrays in, sweeps out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cloudpipe.algorithms.thresholds import (
    PairScores,
    candidate_thresholds,
    check_threshold,
    check_thresholds,
    choose_thresholds,
    sweep,
)
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.metric import accuracy
from tests.conftest import CLASSES


def brute_force(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray, thresholds) -> np.ndarray:
    """Mean score at each threshold, pair by pair."""
    return np.array([np.mean([b if p < t else k for p, k, b in zip(probs, keep, blank)]) for t in thresholds])


def brute_candidates(probs: np.ndarray) -> list[float]:
    above = float(np.nextafter(max(probs), 2.0))
    return sorted({0.0, *map(float, probs), *([above] if above <= 1 else [])})




def test_hand_case_exact_with_tie_to_the_lower_threshold():
    probs = np.array([0.6, 0.1, 0.8, 0.3])
    keep = np.array([0.1, 0.2, 0.8, 0.9])  # segmentation Dice of each pair
    blank = np.array([1.0, 1.0, 0.0, 0.0])  # absent, absent, present, present
    s = sweep(probs, keep, blank)
    np.testing.assert_allclose(s.thresholds, [0, 0.1, 0.3, 0.6, 0.8, np.nextafter(0.8, 1)])
    np.testing.assert_allclose(s.scores, [0.5, 0.5, 0.7, 0.475, 0.7, 0.5])
    assert s.threshold == 0.3 and s.score == pytest.approx(0.7)  # 0.8 ties; the lower wins
    assert s.score_at(0.0) == pytest.approx(0.5) and s.score_at(0.5) == pytest.approx(0.475)
    assert s.score_at(1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(8))
def test_sweep_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    probs = rng.random(n).round(int(rng.integers(1, 3)))  # rounding makes duplicates
    if seed % 3 == 0:
        probs[: n // 3] = rng.choice([0.0, 1.0], size=n // 3)
    present = rng.random(n) < 0.5
    keep = np.where(present, rng.random(n), rng.choice([0.0, 1.0], size=n, p=[0.7, 0.3]))
    blank = (~present).astype(float)
    s = sweep(probs, keep, blank)

    candidates = brute_candidates(probs)
    assert s.thresholds.tolist() == candidates
    exact = brute_force(probs, keep, blank, candidates)
    np.testing.assert_allclose(s.scores, exact, atol=1e-12)
    grid = brute_force(probs, keep, blank, np.linspace(0, 1, 1001))
    best = max(exact.max(), grid.max())
    assert s.score == pytest.approx(best, abs=1e-12)
    assert s.threshold == min(t for t, v in zip(candidates, exact) if v >= best - 1e-9)
    assert s.score >= s.score_at(0.0) and s.score >= s.score_at(0.5)
    assert 0 <= s.threshold <= 1


def test_candidates_cannot_blank_probability_one():
    assert candidate_thresholds(np.array([0.0, 1.0, 0.5])).tolist() == [0.0, 0.5, 1.0]
    assert candidate_thresholds(np.array([0.25])).tolist() == [0.0, 0.25, np.nextafter(0.25, 1)]


def test_sweep_at_competition_size_matches_brute_force():
    """5,546 images (every train image, out of fold): the vectorised sweep's choice is the best
    of every candidate threshold (its speed is a benchmark's business, not a test's)."""
    rng = np.random.default_rng(0)
    n = 5546
    probs, keep, blank = rng.random((n, 4)).round(3), rng.random((n, 4)), (rng.random((n, 4)) < 0.5).astype(float)
    scores = PairScores([str(i) for i in range(n)], keep, blank, blank == 0)
    sweeps = choose_thresholds(probs, scores, rule="best")
    assert list(sweeps) == list(CLASSES)
    for k, c in enumerate(CLASSES):
        best = max(np.where(probs[:, k] < t, blank[:, k], keep[:, k]).mean() for t in (*np.unique(probs[:, k]), 1.1))
        assert sweeps[c].score == pytest.approx(best)


def test_accuracy_scores_match_metrics_accuracy():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame((rng.random((30, 4)) < 0.4).astype(np.int64), columns=list(CLASSES),
                          index=[f"{i}.jpg" for i in range(30)])
    probs = np.clip(labels.to_numpy() * 0.4 + rng.random((30, 4)) * 0.6, 0, 1).round(2)
    sweeps = choose_thresholds(probs, PairScores.accuracy(labels))
    for k, c in enumerate(CLASSES):
        t = sweeps[c].threshold
        assert sweeps[c].score == pytest.approx(accuracy(probs, labels.to_numpy(), t)[k])
        assert sweeps[c].score_at(0.5) == pytest.approx(accuracy(probs, labels.to_numpy(), 0.5)[k])
        grid = [accuracy(probs, labels.to_numpy(), g)[k] for g in np.linspace(0, 1, 1001)]
        assert sweeps[c].score >= max(grid) - 1e-12


def test_check_thresholds():
    assert check_thresholds({"Sugar": 0.5, "Fish": 0, "Flower": 1, "Gravel": 0.25, "objective": "dice"}) == \
        {"Fish": 0.0, "Flower": 1.0, "Gravel": 0.25, "Sugar": 0.5}
    with pytest.raises(CloudpipeError, match="no threshold for Sugar"):
        check_thresholds({"Fish": 0, "Flower": 1, "Gravel": 0.25})
    with pytest.raises(CloudpipeError, match="Gravel threshold 1.5"):
        check_thresholds({"Fish": 0, "Flower": 1, "Gravel": 1.5, "Sugar": 0})
    with pytest.raises(CloudpipeError, match="True"):
        check_threshold(True, "Fish")


def test_midpoint_placement_blanks_the_same_pairs_with_margin():
    rng = np.random.default_rng(7)
    for _ in range(20):
        probs = rng.random(40).round(2)
        blank = (rng.random(40) < 0.5).astype(float)
        keep = np.where(blank == 1, rng.random(40) * 0.3, 0.5 + rng.random(40) * 0.5)
        exact, middle = sweep(probs, keep, blank), sweep(probs, keep, blank, "midpoint")
        assert middle.score == exact.score == middle.score_at(middle.threshold)
        assert np.array_equal(probs < middle.threshold, probs < exact.threshold)
        below = probs[probs < exact.threshold]
        if below.size and exact.threshold <= probs.max():
            assert below.max() < middle.threshold < exact.threshold
    blank_all = sweep(np.array([0.2, 0.4]), np.zeros(2), np.ones(2), "midpoint")
    assert blank_all.threshold == pytest.approx(0.7)  # halfway from the largest probability to 1
    assert sweep(np.array([0.2, 0.4]), np.ones(2), np.zeros(2), "midpoint").threshold == 0.0
    with pytest.raises(CloudpipeError, match="placement"):
        sweep(np.array([0.2]), np.ones(1), np.zeros(1), "nearest")
