"""Which runs a command averages, with which weights, and the checks that keep a tuning made for
one set of runs from being applied to another, or runs of different validation images from
being averaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudpipe.algorithms.ensemble import normalise_weights
from cloudpipe.core.errors import CloudpipeError


@dataclass(frozen=True)
class Ensemble:
    """Runs (resolved folders, in order) and their weights (summing to 1)."""

    runs: tuple[Path, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, runs: Path | Sequence[Path], weights: Sequence[float] | None = None) -> Ensemble:
        """One run or several, with optional weights (equal when None).

        Raises:
            CloudpipeError: no run, the same run twice, or weights that do not fit.
        """
        runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
        if not runs:
            raise CloudpipeError("give at least one --run")
        resolved = tuple(r.resolve() for r in runs)
        if len(set(resolved)) != len(resolved):
            raise CloudpipeError("the same --run is given twice; give it a larger --weight instead")
        return cls(resolved, tuple(normalise_weights(weights, len(runs))))

    @classmethod
    def merged(cls, parts: Sequence[tuple[Sequence[str], Sequence[float], float]]) -> Ensemble:
        """The runs of several ensembles averaged with weights ``(runs, weights, weight)``; a
        run in several of them gets the sum of its weights."""
        total: dict[Path, float] = {}
        for runs, weights, weight in parts:
            for run, w in zip(runs, weights):
                total[Path(run)] = total.get(Path(run), 0.0) + w * weight
        return cls(tuple(total), tuple(normalise_weights(list(total.values()), len(total))))

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    def record(self) -> dict:
        """The ``runs`` and ``weights`` keys saved in a tuned file."""
        return {"runs": [str(r) for r in self.runs], "weights": list(self.weights)}

    def check_tuned_for(self, data: object, path: Path, what: str) -> None:
        """Refuse a tuned file (``data`` parsed) that records other runs or weights, or that
        records none while this is an ensemble.

        Raises:
            CloudpipeError: one line naming ``path``.
        """
        recorded = data.get("runs") if isinstance(data, dict) else None
        if recorded is None:
            if not self.single:
                raise CloudpipeError(f"these {what} do not say which runs they were tuned for; tune them for this "
                                     "ensemble", path=path)
            return
        weights = data.get("weights") or []
        same = [Path(r) for r in recorded] == list(self.runs) and len(weights) == len(self.weights) and all(
            abs(float(a) - b) < 1e-6 for a, b in zip(weights, self.weights))
        if not same:
            mine = ", ".join(f"{r} x{w:.3g}" for r, w in zip(self.runs, self.weights))
            theirs = ", ".join(f"{r} x{float(w):.3g}" for r, w in zip(recorded, weights))
            raise CloudpipeError(f"these {what} were tuned for runs {theirs}, not {mine}", path=path)


def require_same_validation(runs: Sequence[Path], images: Sequence[Sequence[str]]) -> None:
    """Refuse to average runs whose validation images differ (K-fold runs covering the same
    images are fine: each one's out-of-fold predictions cover them all).

    Raises:
        CloudpipeError: one line naming the first run that differs.
    """
    first = set(images[0])
    for run, other in zip(runs[1:], images[1:]):
        other = set(other)
        if other != first:
            lacks, extra = sorted(first - other), sorted(other - first)
            raise CloudpipeError(
                f"validates on other images than {runs[0]} ({len(lacks)} missing, {len(extra)} extra, e.g. "
                f"{', '.join((lacks or extra)[:3])}): average only runs trained on the same split, or K-fold runs "
                "covering the same images", path=run)
