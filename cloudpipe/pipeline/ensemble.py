"""Which runs a command averages, with which weights, and the checks that keep a tuning made for
one set of runs from being applied to another, or runs of different validation images from
being averaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import Field, model_validator

from cloudpipe.algorithms.ensemble import normalise_weights
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import FileModel, dump_model, read_model
from cloudpipe.data.probstore import StoreInfo
from cloudpipe.data.runfolder import run_fingerprint


class TunedFor(FileModel):
    """The runs a tuned file was tuned for (:meth:`Ensemble.record`); a file that names none
    (neither ``runs`` nor ``fingerprints``) was tuned for a single run before fingerprints."""

    runs: list[str] | None = Field(None, description="must be a JSON list of run folders")
    fingerprints: list[str] | None = Field(None, description="must be a JSON list of run fingerprints (tune them again)")
    weights: list[float] | None = Field(None, description="must be a JSON list of numbers, one per run")

    @model_validator(mode="after")
    def _one_weight_per_fingerprint(self) -> TunedFor:
        if self.runs is not None and self.fingerprints is None:
            raise ValueError("need a list of run fingerprints in 'fingerprints'; tune them again")
        if self.fingerprints is not None and len(self.weights or ()) != len(self.fingerprints):
            raise ValueError(f"need one number per run in 'weights': {len(self.fingerprints)} fingerprint(s), "
                             f"{len(self.weights or ())} weight(s)")
        return self


@dataclass(frozen=True)
class Ensemble:
    """Runs (resolved folders, in order) and their weights (summing to 1). A tuned file
    records the runs' fingerprints (:func:`~cloudpipe.data.runfolder.run_fingerprint`), so it
    follows a run that is moved or uploaded, and refuses another run put in its place."""

    runs: tuple[Path, ...]
    weights: tuple[float, ...]
    known: tuple[str, ...] | None = None
    """The runs' fingerprints when they come from a record rather than from the folders."""

    @classmethod
    def of(cls, runs: Path | Sequence[Path], weights: Sequence[float] | None = None) -> Ensemble:
        """One run or several, with weights (equal when None); no run, the same run twice, or
        weights that do not fit are refused."""
        runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
        if not runs:
            raise CloudpipeError("give at least one --run")
        resolved = tuple(r.resolve() for r in runs)
        if len(set(resolved)) != len(resolved):
            raise CloudpipeError("the same --run is given twice; give it a larger --ensemble-weight instead")
        return cls(resolved, tuple(normalise_weights(weights, len(runs))))

    @classmethod
    def merged(cls, parts: Sequence[tuple[StoreInfo, float]]) -> Ensemble:
        """The runs averaged into several stores, each store weighted; a run (by fingerprint)
        in several of them gets the sum of its weights."""
        total: dict[str, float] = {}
        names: dict[str, Path] = {}
        for info, weight in parts:
            for run, fingerprint, w in zip(info.runs, info.fingerprints, info.weights):
                total[fingerprint] = total.get(fingerprint, 0.0) + w * weight
                names.setdefault(fingerprint, Path(run))
        weights = tuple(normalise_weights(list(total.values()), len(total))) if total else ()
        return cls(tuple(names[f] for f in total), weights, tuple(total))

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    def own_file(self, name: str, ensemble_needs: str) -> Path:
        """A run's own tuned file, ``RUN/name``, read when none is given; an ensemble has none
        (refused, ``ensemble_needs`` saying what to give instead)."""
        if not self.single:
            raise CloudpipeError(ensemble_needs)
        return self.runs[0] / name

    @cached_property
    def fingerprints(self) -> tuple[str, ...]:
        """What each run is (hashed once per command)."""
        return self.known if self.known is not None else tuple(run_fingerprint(r) for r in self.runs)

    def record(self) -> dict:
        """The ``runs`` (where they were, for people), ``fingerprints`` (what they are, for the
        checks) and ``weights`` keys saved in a tuned file (:class:`TunedFor`)."""
        return dump_model(TunedFor, {"runs": [str(r) for r in self.runs], "fingerprints": list(self.fingerprints),
                                     "weights": list(self.weights)}, "tuned-for record")

    def describe(self) -> str:
        return ", ".join(f"{r.name} ({f[:8]}) x{w:.3g}" for r, f, w in zip(self.runs, self.fingerprints, self.weights))

    def check_tuned_for(self, data: object, path: Path, what: str) -> None:
        """Refuse a tuned file (``data`` parsed, from ``path``) that records other runs or
        weights, or that records none while this is an ensemble."""
        tuned = read_model(TunedFor, data if isinstance(data, dict) else {}, what, path=path)
        if tuned.fingerprints is None:
            if not self.single:
                raise CloudpipeError(f"these {what} do not say which runs they were tuned for; tune them for this "
                                     "ensemble", path=path)
            return
        recorded, weights = tuned.fingerprints, tuned.weights
        same = recorded == list(self.fingerprints) and all(abs(a - b) < 1e-6 for a, b in zip(weights, self.weights))
        if not same:
            names = tuned.runs or []
            theirs = ", ".join(f"{Path(r).name} ({f[:8]}) x{w:.3g}" for r, f, w in
                               zip(names + ["?"] * len(recorded), recorded, weights))
            raise CloudpipeError(f"these {what} were tuned for runs {theirs}, not {self.describe()}", path=path)


def require_same_validation(runs: Sequence[Path], images: Sequence[Sequence[str]]) -> None:
    """Refuse to average runs whose validation images differ, naming the first that does
    (K-fold runs covering the same images are fine)."""
    first = set(images[0])
    for run, other in zip(runs[1:], images[1:]):
        other = set(other)
        if other != first:
            lacks, extra = sorted(first - other), sorted(other - first)
            raise CloudpipeError(
                f"validates on other images than {runs[0]} ({len(lacks)} missing, {len(extra)} extra, e.g. "
                f"{', '.join((lacks or extra)[:3])}): average only runs trained on the same split, or K-fold runs "
                "covering the same images", path=run)
