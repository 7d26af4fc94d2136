"""The choice rules: the best candidate, or the default unless a candidate beats it beyond the noise."""

from __future__ import annotations

import numpy as np
import pytest

from cloudpipe.algorithms.postprocess import MinSize, Threshold, choose
from cloudpipe.algorithms.presence import choose_gates
from cloudpipe.algorithms.robust import RULES, check_rule, choose_index, holds_up, paired_gaps, plateau
from cloudpipe.algorithms.thresholds import PairScores, sweep
from cloudpipe.core.errors import CloudpipeError


def _flat(n: int = 200, m: int = 9, seed: int = 0) -> np.ndarray:
    """Per-image scores of m candidates that differ only by noise."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 1)) + 0.05 * rng.standard_normal((n, m))


def test_paired_gaps_match_their_definition():
    scores = _flat()
    mean, gap, se = paired_gaps(scores)
    best = int(np.argmax(scores.mean(0)))
    diff = scores - scores[:, [best]]
    assert np.allclose(mean, scores.mean(0))
    assert np.allclose(gap, diff.mean(0)) and gap.max() == pytest.approx(0.0) and (gap <= 1e-15).all()
    assert np.allclose(se, [np.std(diff[:, j], ddof=1) / np.sqrt(len(scores)) for j in range(scores.shape[1])])


def test_best_is_the_first_highest_mean():
    scores = np.array([[0.1, 0.5, 0.5], [0.1, 0.5, 0.5]])
    assert choose_index(scores, "best") == 1


def test_robust_keeps_the_default_on_a_flat_curve_and_is_deterministic():
    scores = _flat()
    assert choose_index(scores, "best") != 4  # the noise puts the best elsewhere
    picks = {choose_index(scores, "robust", default=4, coords=np.arange(9.0)) for _ in range(3)}
    assert picks == {4}


def test_robust_moves_on_a_clear_gain_to_the_middle_of_the_plateau():
    rng = np.random.default_rng(1)
    n = 300
    base = rng.random((n, 1))
    lift = np.array([0, 0, 0, 0, 0.2, 0.2, 0.2, 0.2, 0.2])  # candidates 4..8 are far better than the default 0
    scores = base + lift + 0.01 * rng.standard_normal((n, 9))
    chosen = choose_index(scores, "robust", default=0, coords=np.arange(9.0))
    assert chosen == 6
    assert choose_index(scores, "robust", default=0) == choose_index(scores, "best")  # unordered: the best


def test_plateau_takes_the_centre_of_the_near_best_or_the_best_when_unordered():
    mean = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    assert plateau(mean, mean - 1, np.zeros(5), np.arange(5.0)) == 2
    assert plateau(mean, mean - 1, np.zeros(5), None) == 1
    wide = np.array([0.0, 0.9, 0.95, 0.97, 1.0])  # within one standard error of 0.1: 1..4
    assert plateau(wide, wide - 1, np.full(5, 0.1), np.arange(5.0)) == 3  # nearest 2.5, the higher mean


def test_holds_up_tells_a_real_gain_from_noise_and_is_deterministic():
    rng = np.random.default_rng(6)
    noise, real = rng.standard_normal(300), 0.5 + rng.standard_normal(300)
    for gains, expected in ((noise, False), (real, True)):
        answers = {holds_up(len(gains), lambda rows: None, lambda rows, _, g=gains: g[rows]) for _ in range(3)}
        assert answers == {expected}
    assert not holds_up(6, lambda rows: None, lambda rows, _: np.ones(len(rows)))  # too few images to tell


def test_unknown_rule_is_refused_with_the_known_ones():
    with pytest.raises(CloudpipeError, match="best, robust"):
        check_rule("median")
    assert RULES == ("best", "robust")


def _brute_force_sweep(probs, keep, blank, threshold):
    return np.where(probs < threshold, blank, keep)


def test_sweep_robust_keeps_every_mask_when_blanking_gains_only_noise():
    rng = np.random.default_rng(2)
    n = 400
    probs = rng.random(n)
    present = rng.random(n) < 0.5  # unrelated to the probabilities: blanking gains nothing real
    keep = np.where(present, 0.5, 0.3) + 0.2 * rng.random(n)  # blanking: +0.6 absent, -0.6 present on average
    blank = (~present).astype(float)
    s_best, s_robust = sweep(probs, keep, blank), sweep(probs, keep, blank, rule="robust")
    assert s_best.threshold > 0  # the exact search finds some noise to exploit
    assert s_robust.threshold == 0.0


def test_sweep_robust_moves_on_a_clear_gain_and_its_errors_match_brute_force():
    rng = np.random.default_rng(3)
    n = 400
    present = rng.random(n) < 0.5
    probs = np.clip(np.where(present, 0.7, 0.3) + 0.15 * rng.standard_normal(n), 0, 1)
    keep = np.where(present, 0.6, 0.0)
    blank = (~present).astype(float)
    robust = sweep(probs, keep, blank, rule="robust")
    assert 0.3 < robust.threshold < 0.7
    assert robust.score > sweep(probs, keep, blank).score_at(0.0) + 0.1
    # The cumulative-sum errors are those of the per-pair matrix the rule defines.
    matrix = np.stack([_brute_force_sweep(probs, keep, blank, t) for t in robust.thresholds], axis=1)
    mean, gap, se = paired_gaps(matrix)
    assert np.allclose(mean, robust.scores)
    assert robust.best == plateau(mean, gap, se, robust.thresholds)


def test_postprocess_robust_keeps_defaults_unless_a_combination_is_clearly_better():
    rng = np.random.default_rng(4)
    steps = (Threshold(), MinSize(grid=(0, 100, 1000)))
    n = 300
    truth_area = np.full((n, 4), 1000)
    area = np.full((n, 4, 5, 3), 1000)
    inter = np.clip(800 + rng.integers(-60, 60, size=(n, 4, 5, 3)), 0, 1000)  # noise around one Dice for everything
    inter[:, 1, 4, 2] = 1000  # Flower: a clearly better combination (threshold 0.7, min size 1000)
    best, _ = choose(steps, inter, area, truth_area)
    robust, dice = choose(steps, inter, area, truth_area, "robust")
    assert best.values["Fish"] != (0.5, 0)  # noise wins the exact search
    assert robust.values["Fish"] == robust.values["Gravel"] == robust.values["Sugar"] == (0.5, 0)
    assert robust.values["Flower"] == best.values["Flower"] == (0.7, 1000)
    assert dice.shape == (4, 5, 3)


def _gate_case(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    present = rng.random((n, 4)) < 0.5
    pairs = PairScores([f"{i}.jpg" for i in range(n)], np.where(present, 0.6, 0.1), (~present).astype(float), present)
    signal = lambda: np.clip(present + 0.4 * rng.standard_normal((n, 4)), 0, 1)  # noqa: E731
    return pairs, signal


def test_gate_choice_robust_keeps_the_first_source_when_another_is_as_good():
    switched = {"best": 0, "robust": 0}
    for seed in range(8):
        pairs, signal = _gate_case(seed)
        first = signal()
        twin = np.clip(first + 0.02 * np.random.default_rng(seed).standard_normal(first.shape), 0, 1)
        scores = {"classifier": first, "top_mean": twin}  # as good as the first, up to noise (blends too)
        for rule in switched:
            switched[rule] += sum(g != {"classifier": 1.0} for g in choose_gates(scores, pairs, rule=rule).gates.values())
    assert switched["best"] >= 10  # of 32 class-draws: the exact search follows the noise
    assert switched["robust"] <= 6


def test_gate_choice_robust_moves_to_a_clearly_better_source():
    pairs, signal = _gate_case(9)
    weak = np.clip(0.5 + 0.3 * np.random.default_rng(0).standard_normal((300, 4)), 0, 1)
    choice = choose_gates({"classifier": weak, "top_mean": signal()}, pairs, rule="robust")
    assert all(g.get("top_mean", 0) >= 0.75 for g in choice.gates.values())  # away from the uninformative one


def test_the_default_kept_says_why_with_the_figures():
    from cloudpipe.algorithms.robust import choose_explained

    rng = np.random.default_rng(2)
    n = 400
    probs = rng.random(n)
    present = rng.random(n) < 0.5
    keep = np.where(present, 0.5, 0.3) + 0.2 * rng.random(n)
    noise = sweep(probs, keep, (~present).astype(float), rule="robust")
    assert noise.threshold == 0.0 and noise.kept.costs and noise.kept.held_out is not None
    gain, se = noise.kept.held_out
    assert noise.kept.reason() == (f"kept no gating (threshold 0) over {noise.kept.instead} (in-sample gain "
                                   f"{noise.kept.gain:+.4f}): its held-out gain {gain:+.4f} is inside the noise "
                                   f"(1 SE = {se:.4f}; 400 images)")
    few = sweep(probs[:8], np.zeros(8), np.ones(8), rule="robust")  # blanking all 8 gains 1.0 each, but 8 < 10
    assert few.threshold == 0.0 and few.kept.reason().endswith("too few images to check it on held-out ones (8 < 10)")
    assert sweep(probs[:8], np.zeros(8), np.ones(8)).kept is None  # best: nothing kept, nothing to say
    scores = np.tile(np.arange(5.0), (6, 1))
    index, kept = choose_explained(scores, "robust", default=0, name=lambda j: f"min_size {j * 100}")
    assert index == 0 and kept.reason().startswith("kept the default (min_size 0) over min_size 400 (in-sample gain +4.0000)")
