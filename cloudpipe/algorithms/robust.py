"""Choosing a tuned value that carries from the validation images to unseen ones.

Every tuned decision (a post-processing value, a presence threshold, the presence source of a
class) is a choice among candidates, each scored on every validation image. The candidate of
the single best mean fits the noise of those images as well as their signal: on a few hundred
images neighbouring candidates differ by less than their sampling error, and the best one is
then partly luck (see ``benchmarks/README.md``, "Decisions that carry").

Two rules (:data:`RULES`):

- ``best``: the candidate of the highest mean score; ties go to the first.
- ``robust``: two guards against that luck.

  1. *The middle of the plateau, not its peak.* Candidates whose mean is within ``z`` standard
     errors of the best one's, the standard error being that of the paired per-image
     difference from the best, are indistinguishable from it on these images (the
     one-standard-error rule of Breiman et al., 1984); the one nearest the centre of that
     near-best set is chosen (:func:`plateau`).
  2. *Tuning must pay on images it did not see.* The choice is made again on K-1 of K parts of
     the images and scored against the default (the untuned value) on the part left out, for
     every part, on seeded random splits (:func:`holds_up`). Unless that held-out gain is above
     ``z`` of its standard errors, the default is kept: the gain of tuning is inside the noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cloudpipe.core.choices import RULES, Rule
from cloudpipe.core.errors import CloudpipeError

Z = 1.0
"""Standard errors: within them a candidate is near the best; beyond them a held-out gain counts."""
FOLDS, REPEATS, SEED = 5, 2, 0
"""The held-out check of :func:`holds_up`: K parts, repeated on this many seeded shuffles."""
TOLERANCE = 1e-12
"""Mean gaps this close to zero count as ties (sums in another order round differently)."""

Choice = TypeVar("Choice")


def check_rule(rule: str) -> Rule:
    """``rule`` if it is one of :data:`RULES`, else a CloudpipeError listing them."""
    if rule not in RULES:
        raise CloudpipeError(f"choice rule {rule!r} is not one of {', '.join(RULES)}")
    return rule  # type: ignore[return-value]


def paired_gaps(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From the scores (n, m) of n images under m candidates: the ``mean`` score of every
    candidate, its ``gap`` to the best mean (<= 0), and ``se``, the standard error of its mean
    per-image difference from the best candidate (0 for it)."""
    scores = np.asarray(scores, np.float64)
    n = scores.shape[0]
    mean = scores.mean(axis=0)
    diff = scores - scores[:, [int(np.argmax(mean))]]
    se = diff.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(scores.shape[1])
    return mean, diff.mean(axis=0), se


def best_index(mean: np.ndarray) -> int:
    """The first candidate of the highest mean (up to :data:`TOLERANCE`)."""
    return int(np.flatnonzero(mean >= mean.max() - TOLERANCE)[0])


def plateau(mean: np.ndarray, gap: np.ndarray, se: np.ndarray, coords: np.ndarray | None, z: float = Z) -> int:
    """The index of the candidate nearest the centre of those within ``z`` standard errors of the
    best (``mean, gap, se``: :func:`paired_gaps`'s); ties go to the higher mean, then the first.
    ``coords`` (m, d) says where each candidate lies (its threshold, or its grid indices scaled
    to [0, 1]); None for unordered candidates, which have no centre: then the best."""
    if coords is None:
        return best_index(mean)
    idx = np.flatnonzero(gap >= -z * se - TOLERANCE)
    points = np.asarray(coords, np.float64).reshape(len(mean), -1)[idx]
    distance = ((points - points.mean(axis=0)) ** 2).sum(axis=1)
    return int(idx[np.lexsort((-mean[idx], distance))[0]])


@dataclass(frozen=True)
class DefaultKept:
    """Why ``robust`` kept the untuned ``default`` (``no gating (threshold 0)``) over the
    candidate ``instead`` (``threshold 0.52``) of in-sample ``gain`` on ``images`` images: too
    few images for the held-out check (``held_out`` None: fewer than ``needed``), or a held-out
    mean gain per image inside ``z`` of its standard errors (``held_out``: the two)."""

    images: int
    default: str
    instead: str
    gain: float
    held_out: tuple[float, float] | None = None
    needed: int = 2 * FOLDS
    z: float = Z

    @property
    def costs(self) -> bool:
        """Whether keeping the default gave up an in-sample gain (else it was a tie, nothing to explain)."""
        return self.gain > TOLERANCE

    def reason(self) -> str:
        """One clause, with the figures: ``too few images (8 < 10 ...)`` or ``held-out gain ...``."""
        if self.held_out is None:
            why = f"too few images to check it on held-out ones ({self.images} < {self.needed})"
        else:
            gain, se = self.held_out
            why = f"its held-out gain {gain:+.4f} is inside the noise ({self.z:g} SE = {self.z * se:.4f}; {self.images} images)"
        return f"kept {self.default} over {self.instead} (in-sample gain {self.gain:+.4f}): {why}"


def held_out_gain(n: int, choose_on: Callable[[np.ndarray], Choice], gain_of: Callable[[np.ndarray, Choice], np.ndarray],
                  folds: int = FOLDS, repeats: int = REPEATS, seed: int = SEED) -> tuple[float, float] | None:
    """The mean held-out gain per image of a choice over the default and its standard error
    (see :func:`holds_up`), or None with fewer than ``2 * folds`` images (too few to tell)."""
    if n < 2 * folds:
        return None
    rng = np.random.default_rng(seed)
    gains = np.zeros(n)
    for _ in range(repeats):
        order = rng.permutation(n)
        for part in np.array_split(order, folds):
            rest = np.setdiff1d(order, part, assume_unique=True)
            gains[part] += gain_of(part, choose_on(rest))
    gains /= repeats
    return float(gains.mean()), float(gains.std(ddof=1) / np.sqrt(n))


def holds_up(n: int, choose_on: Callable[[np.ndarray], Choice], gain_of: Callable[[np.ndarray, Choice], np.ndarray],
             z: float = Z, folds: int = FOLDS, repeats: int = REPEATS, seed: int = SEED) -> bool:
    """Whether a choice made on some images beats the default on the others beyond the noise.

    The ``n`` images are shuffled ``repeats`` times (seeded: the answer is deterministic) and
    cut into ``folds`` parts; for each part the choice is made on the rest (``choose_on(rows)``),
    and each image of the part gets the gain of that choice over the default
    (``gain_of(rows, choice)``, per image). The mean gain per image must exceed ``z`` standard
    errors; too few images cannot tell a gain from noise.
    """
    return _beyond_noise(held_out_gain(n, choose_on, gain_of, folds, repeats, seed), z)


def _beyond_noise(checked: tuple[float, float] | None, z: float) -> bool:
    """Whether a held-out (gain, standard error) exceeds ``z`` standard errors (None: too few images)."""
    return checked is not None and checked[0] > z * checked[1]


def check_held_out(n: int, choose_on: Callable[[np.ndarray], Choice], gain_of: Callable[[np.ndarray, Choice], np.ndarray],
                   default: str, instead: str, gain: float, z: float = Z) -> DefaultKept | None:
    """None when a choice :func:`holds_up` against the default, else why the default stays
    (see :class:`DefaultKept` for the other arguments)."""
    checked = held_out_gain(n, choose_on, gain_of)
    return None if _beyond_noise(checked, z) else DefaultKept(n, default, instead, gain, checked, z=z)


def choose_index(scores: np.ndarray, rule: Rule = "best", *, default: int | None = None,
                 coords: np.ndarray | None = None, z: float = Z) -> int:
    """The chosen candidate of per-image scores (n, m): the best one, or with ``robust`` the
    :func:`plateau` choice, kept only where it :func:`holds_up` against ``default`` (when
    one is given); :func:`choose_explained` also says why a default was kept."""
    return choose_explained(scores, rule, default=default, coords=coords, z=z)[0]


def choose_explained(scores: np.ndarray, rule: Rule = "best", *, default: int | None = None,
                     coords: np.ndarray | None = None, z: float = Z,
                     name: Callable[[int], str] = str) -> tuple[int, DefaultKept | None]:
    """:func:`choose_index`, and when ``robust`` kept ``default`` over another candidate, why
    (``name`` says what a candidate is, for the reason)."""
    scores = np.asarray(scores, np.float64)
    mean, gap, se = paired_gaps(scores)
    if check_rule(rule) == "best":
        return best_index(mean), None
    chosen = plateau(mean, gap, se, coords, z)
    if default is None or chosen == default:
        return chosen, None

    def choose_on(rows: np.ndarray) -> int:
        return plateau(*paired_gaps(scores[rows]), coords, z)

    def gain_of(rows: np.ndarray, j: int) -> np.ndarray:
        return scores[rows, j] - scores[rows, default]

    kept = check_held_out(len(scores), choose_on, gain_of, f"the default ({name(default)})", name(chosen),
                          float(mean[chosen] - mean[default]), z)
    return (chosen, None) if kept is None else (default, kept)
