"""Presence sources: pixel statistics of a store, blends, and the per-class choice of a gate."""

from __future__ import annotations

import numpy as np
import pytest

from cloudpipe.algorithms.presence import PixelStats, blend, candidate_gates, choose_gates, gate_name
from cloudpipe.algorithms.thresholds import PairScores, choose_thresholds
from cloudpipe.core.errors import CloudpipeError
from tests.conftest import CLASSES


def test_pixel_statistics_match_their_definitions():
    rng = np.random.default_rng(0)
    store = rng.integers(0, 256, (5, 4, 35, 52), dtype=np.uint8)
    store[1, 2] = 0
    stats = PixelStats(top_k=100, area_threshold=0.6).scores(store, chunk=2)
    flat = store.reshape(5, 4, -1).astype(np.float64)
    np.testing.assert_allclose(stats["max"], flat.max(-1) / 255)
    np.testing.assert_allclose(stats["top_mean"], np.sort(flat, -1)[..., -100:].mean(-1) / 255)
    np.testing.assert_allclose(stats["area"], (flat >= round(0.6 * 255)).mean(-1))
    assert stats["max"][1, 2] == stats["top_mean"][1, 2] == stats["area"][1, 2] == 0
    everything = PixelStats(top_k=10**6).scores(store)["top_mean"]  # K larger than the image: all pixels
    np.testing.assert_allclose(everything, flat.mean(-1) / 255)
    with pytest.raises(CloudpipeError, match="top_k"):
        PixelStats(top_k=0)


def test_tuned_gate_beats_or_equals_every_source_and_blend_it_searched():
    rng = np.random.default_rng(1)
    n = 60
    present = rng.random((n, 4)) < 0.5
    keep = np.where(present, 0.4 + 0.6 * rng.random((n, 4)), 0.3 * rng.random((n, 4)))
    pairs = PairScores([str(i) for i in range(n)], keep, (~present).astype(float), present)
    scores = {s: np.clip(present * 0.3 + rng.random((n, 4)) * 0.7, 0, 1).round(3) for s in ("classifier", "head", "top_mean")}
    choice = choose_gates(scores, pairs)
    assert [gate_name(g) for g in candidate_gates(["classifier", "head"])] == [
        "classifier", "head", "0.25 classifier + 0.75 head", "0.5 classifier + 0.5 head", "0.75 classifier + 0.25 head"]
    assert len(choice.table) == 3 + 2 * 3
    for k, c in enumerate(CLASSES):
        for gate in candidate_gates(list(scores)):
            alone = choose_thresholds(blend(scores, {cc: gate for cc in CLASSES}), pairs)[c]
            assert choice.sweeps[c].score >= alone.score - 1e-12  # beats or equals every option
            assert choice.table[gate_name(gate)][k] == pytest.approx(alone.score)
        gated = blend(scores, choice.gates)[:, k] < choice.sweeps[c].threshold
        assert np.where(gated, pairs.blank[:, k], keep[:, k]).mean() == pytest.approx(choice.sweeps[c].score)
    rows = choice.rows()
    assert {r["source"] for r in rows} == set(choice.table) and all(set(CLASSES) <= set(r) for r in rows)
    only = choose_gates(scores, pairs, ["classifier"])
    assert all(g == {"classifier": 1.0} for g in only.gates.values()) and list(only.table) == ["classifier"]
    with pytest.raises(CloudpipeError, match="no area scores"):
        blend(scores, {c: {"area": 1.0} for c in CLASSES})



def test_robust_says_why_it_kept_the_first_source_over_a_better_one():
    """A second source that only copies the classifier with noise scores a little better on
    some classes by luck; robust keeps the classifier there and says why, with the figures."""
    rng = np.random.default_rng(0)
    n = 200
    present = rng.random((n, 4)) < 0.5
    pairs = PairScores([str(i) for i in range(n)], np.where(present, 0.6, 0.0), (~present).astype(float), present)
    classifier = np.clip(present * 0.3 + rng.random((n, 4)) * 0.7, 0, 1).round(3)
    head = np.clip(classifier + rng.normal(0, 0.02, (n, 4)), 0, 1).round(3)
    choice = choose_gates({"classifier": classifier, "head": head}, pairs, rule="robust")
    assert choice.kept and all(choice.gates[c] == {"classifier": 1.0} for c in choice.kept)
    for kept in choice.kept.values():
        assert kept.reason().startswith("kept the classifier gate over the ") and "in-sample gain +0.0" in kept.reason()
        assert kept.reason().endswith(f"is inside the noise (1 SE = {kept.held_out[1]:.4f}; 200 images)")
    assert not choose_gates({"classifier": classifier, "head": head}, pairs).kept  # best: nothing kept


def test_a_blend_of_weights_summing_to_1_within_the_tolerance_stays_a_probability():
    """A thresholds file's weights may sum to 1 within 1e-6; the blend must not leave [0, 1], which gate refuses."""
    scores = {"classifier": np.ones((2, 4)), "max": np.ones((2, 4))}
    weights = {c: {"classifier": 0.5000004, "max": 0.5000004} for c in CLASSES}
    assert blend(scores, weights).max() == 1.0
