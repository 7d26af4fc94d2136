"""Where the Dice goes: every number against its reference definition, pair by pair."""

from __future__ import annotations

import numpy as np
import pytest

from cloudpipe.algorithms.breakdown import (
    DECISIONS,
    binned_mean,
    decisions,
    gated_dice,
    headline,
    rank_images,
)
from cloudpipe.algorithms.gating import GateSpec
from cloudpipe.algorithms.gating import keep as keep_pairs
from cloudpipe.core.metric import PairStats
from tests.conftest import CLASSES


def random_case(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random((n, 4)) < 0.5, rng.integers(1, 500, (n, 4)), 0)
    pred = np.where(rng.random((n, 4)) < 0.6, rng.integers(1, 500, (n, 4)), 0)
    inter = np.minimum(truth, pred) * (rng.random((n, 4)) < 0.7)
    stats = PairStats([f"{i}.jpg" for i in range(n)], inter, pred, truth)
    probs = np.clip((truth > 0) * 0.5 + rng.random((n, 4)) * 0.6, 0, 1)
    return stats, probs


def pair_dice(inter, pred, truth):
    return 1.0 if pred + truth == 0 else 2 * inter / (pred + truth)


def reference(stats, keep):
    """Mean Dice per class, pair by pair: a blanked pair scores 1 when absent, else 0."""
    n = len(stats.images)
    out = np.zeros((n, 4))
    for i in range(n):
        for k in range(4):
            t = stats.truth_area[i, k]
            out[i, k] = pair_dice(stats.intersection[i, k], stats.pred_area[i, k], t) if keep[i, k] else float(t == 0)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_headline_rows_equal_their_definitions(seed):
    stats, probs = random_case(seed=seed)
    thresholds = dict(zip(CLASSES, (0.3, 0.5, 0.7, 0.45)))
    rows = {r["submission"]: r for r in headline(stats, probs, GateSpec(thresholds))}
    everything = np.ones_like(probs, bool)
    expected = {
        "all masks empty": reference(stats, ~everything),
        "segmentation alone": reference(stats, everything),
        "gated at 0.5": reference(stats, probs >= 0.5),
        "gated, tuned thresholds": reference(stats, probs >= np.array(list(thresholds.values()))),
        "gated by true presence (oracle)": reference(stats, stats.truth_area > 0),
    }
    for name, dice in expected.items():
        for k, c in enumerate(CLASSES):
            assert rows[name][c] == pytest.approx(dice[:, k].mean()), (name, c)
        assert rows[name]["mean"] == pytest.approx(dice.mean())
    share = rows["capture share (gate gain / oracle gain)"]
    for key in (*CLASSES, "mean"):
        alone, tuned, oracle = (rows[r][key] for r in ("segmentation alone", "gated, tuned thresholds", "gated by true presence (oracle)"))
        assert share[key] == pytest.approx((tuned - alone) / (oracle - alone))


def test_without_probabilities_or_thresholds():
    stats, probs = random_case()
    assert [r["submission"] for r in headline(stats)] == ["all masks empty", "segmentation alone",
                                                          "gated by true presence (oracle)"]
    names = [r["submission"] for r in headline(stats, probs)]
    assert "gated at 0.5" in names and "gated, tuned thresholds" not in names and names[-1].startswith("capture share")


def test_capture_share_is_undefined_without_room():
    stats = PairStats(["a.jpg"], np.zeros((1, 4)), np.zeros((1, 4)), np.zeros((1, 4)))  # all absent, all empty: perfect
    share = headline(stats, np.full((1, 4), 0.9), GateSpec(dict.fromkeys(CLASSES, 0.5)))[-1]
    assert all(np.isnan(share[k]) for k in (*CLASSES, "mean"))


def test_decisions_count_and_cost():
    stats, probs = random_case(seed=3)
    keep = keep_pairs(probs, 0.5)
    table = decisions(stats, keep)
    present = stats.truth_area > 0
    alone, gated = reference(stats, np.ones_like(keep)), reference(stats, keep)
    kinds = [keep & present, keep & ~present, ~keep & present, ~keep & ~present]
    for k in range(4):
        for j, kind in enumerate(kinds):
            assert table.counts[k, j] == kind[:, k].sum()
            assert table.effect[k, j] == pytest.approx(((gated - alone)[:, k] * kind[:, k]).sum() / len(keep))
        assert table.counts[k].sum() == len(keep)
        assert table.effect[k].sum() == pytest.approx(gated[:, k].mean() - alone[:, k].mean())  # the net is the gate's gain
    assert (table.effect[:, 2] <= 0).all() and (table.effect[:, 3] >= 0).all() and (table.effect[:, :2] == 0).all()
    assert len(table.rows()) == 16 and {r["decision"] for r in table.rows()} == set(DECISIONS)
    np.testing.assert_allclose(gated_dice(stats, keep), gated)


def test_binned_mean_and_ranking():
    values, by = np.array([1.0, 0.0, 0.5, 0.25]), np.array([0.05, 0.15, 0.15, 1.0])
    mean, count = binned_mean(values, by, (0, 0.1, 0.2, 1.0))
    np.testing.assert_allclose(mean, [1.0, 0.25, 0.25]) and np.testing.assert_array_equal(count, [1, 2, 1])
    mean, count = binned_mean(values, by, (0, 0.5, 0.9, 1.0))
    assert np.isnan(mean[1]) and count[1] == 0  # an empty bin
    dice = np.array([[1.0] * 4, [0.0] * 4, [0.5] * 4])
    assert rank_images(dice, ["a", "b", "c"], 1) == (["b"], ["a"])
    assert rank_images(dice, ["a", "b", "c"], 3) == (["b", "c", "a"], [])  # the best never repeat the worst


def test_headline_applies_the_tuned_gate_with_its_rule():
    probs = np.array([[0.2, 0.4, 0.1, 0.3], [0.9, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]])
    drawn = np.array([[True, False, True, True], [True, True, True, True], [False, False, False, False]])
    stats = PairStats(["a", "b", "c"], np.ones((3, 4)), drawn * 2.0, np.ones((3, 4)))
    rows = {r["submission"]: r for r in headline(stats, probs, GateSpec(dict.fromkeys(CLASSES, 0.5), at_least_one=True))}
    np.testing.assert_allclose(rows["gated, tuned thresholds"]["mean"], reference(stats, keep_pairs(probs, 0.5, drawn)).mean())
    plain = {r["submission"]: r for r in headline(stats, probs, GateSpec(dict.fromkeys(CLASSES, 0.5)))}
    assert plain["gated, tuned thresholds"]["mean"] < rows["gated, tuned thresholds"]["mean"]  # the rule kept a mask
