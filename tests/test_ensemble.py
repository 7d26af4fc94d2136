"""Weighted means of uint8 stores and of presence probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloudpipe.algorithms.ensemble import RunningMean, mean_probs, mean_stores, normalise_weights
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.pipeline.ensemble import Ensemble


def stores(n=5, count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 4, 6, 7), dtype=np.uint8) for _ in range(count)]


def test_normalise_weights():
    assert normalise_weights(None, 2) == [0.5, 0.5]
    assert normalise_weights([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(CloudpipeError, match="one --ensemble-weight per --run"):
        normalise_weights([1], 2)
    with pytest.raises(CloudpipeError, match="positive"):
        normalise_weights([1, 0], 2)


def test_mean_of_two_is_the_rounded_mean():
    a, b = stores(count=2)
    out = mean_stores([a, b], [0.5, 0.5], np.empty_like(a), chunk=2)
    expected = np.rint((a.astype(np.float64) + b) / 2).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_weights_and_row_order():
    a, b = stores(count=2)
    order = np.array([4, 2, 0, 1, 3])
    out = mean_stores([a, b[order]], normalise_weights([1, 3], 2), np.empty_like(a), rows=[np.arange(5), np.argsort(order)])
    expected = np.rint((a.astype(np.float64) + 3.0 * b) / 4).astype(np.uint8)
    assert np.array_equal(out, expected)  # quarters are exact in float32


def test_running_mean_gives_the_same_bytes_as_mean_stores():
    parts = stores(count=3)
    weights = normalise_weights([1, 2, 1], 3)
    whole = mean_stores(parts, weights, np.empty_like(parts[0]))
    running = RunningMean(np.zeros(parts[0].shape, np.float32))
    for store, w in zip(parts, weights):
        for rows in (np.array([3, 0]), np.array([1, 4, 2])):  # batches in any order
            running.add(rows, store[rows], w)
    assert np.array_equal(running.write(np.empty_like(parts[0]), chunk=2), whole)


def test_mean_probs():
    p, q = np.array([[0.2, 0.4, 0.6, 0.8]]), np.array([[0.6, 0.0, 0.0, 0.4]])
    np.testing.assert_allclose(mean_probs([p, q], [0.25, 0.75]), [[0.5, 0.1, 0.15, 0.5]])


def test_huge_weights_do_not_overflow_to_zero():
    assert normalise_weights([1e308, 1e308], 2) == [0.5, 0.5]  # the sum overflowed: both were 0
    assert normalise_weights([1.5e308, 5e307], 2) == pytest.approx([0.75, 0.25])
    with pytest.raises(CloudpipeError, match="too far apart"):
        normalise_weights([1e308, 5e-324], 2)


def test_the_weight_message_names_the_option_weights_go_with():
    with pytest.raises(CloudpipeError, match=r"one --ensemble-weight per --store: 1 weight\(s\) for 2 store\(s\)"):
        normalise_weights([1], 2, per="--store")


@pytest.mark.parametrize("record, message", [
    ({"runs": ["/r/a"], "weights": [1.0]}, "need a list of run fingerprints in 'fingerprints'; tune them again"),
    ({"fingerprints": "aaaa", "weights": [1.0]}, "fingerprints: must be a JSON list of run fingerprints (tune them again), "
                                                 "got 'aaaa'"),
    ({"fingerprints": ["a" * 64], "weights": ["1"]}, "weights.0: must be a JSON list of numbers, one per run, got '1'"),
    ({"fingerprints": ["a" * 64]}, "need one number per run in 'weights': 1 fingerprint(s), 0 weight(s)"),
    ({"runs": "/r/a", "fingerprints": ["a" * 64], "weights": [1.0]}, "runs: must be a JSON list of run folders, got '/r/a'"),
    ({"runs": ["/r/b"], "fingerprints": ["b" * 64], "weights": [1.0]}, "were tuned for runs b (bbbbbbbb) x1, not a (aaaaaaaa) x1"),
])
def test_a_tuned_file_for_other_or_garbled_runs_is_refused_in_one_line(record, message):
    single = Ensemble((Path("/r/a"),), (1.0,), known=("a" * 64,))
    single.check_tuned_for({"runs": ["/r/a"], "fingerprints": ["a" * 64], "weights": [1], "Fish": 0.5}, Path("t.json"), "x")
    single.check_tuned_for({"Fish": 0.5}, Path("t.json"), "x")  # from before fingerprints: a single run's own
    with pytest.raises(CloudpipeError) as info:
        single.check_tuned_for(record, Path("t.json"), "thresholds")
    assert str(info.value).startswith("t.json: ") and message in str(info.value) and "\n" not in str(info.value)
