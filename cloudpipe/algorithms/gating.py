"""Gating: blank the masks of (image, class) pairs whose presence score is below the class
threshold. Blanking needs no mask decoding; every other mask is left as it came.

:class:`GateSpec` is what ``thresholds.json`` holds: the thresholds, the score each class is
gated on (a source or a blend, :mod:`cloudpipe.algorithms.presence`) and whether the "at least
one class per image" rule (:func:`keep_most_probable`) applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field, ValidationInfo, create_model

from cloudpipe.algorithms.presence import CLASSIFIER, Gate, PixelStats
from cloudpipe.algorithms.thresholds import check_threshold, check_thresholds
from cloudpipe.core.arrays import check_numbers
from cloudpipe.core.errors import BadValue, CloudpipeError
from cloudpipe.core.models import WHOLE_KEPT, FileModel, dump_model, per_class, read_model
from cloudpipe.core.profile import active

THRESHOLDS_FORMAT = 1
"""The version of the ``thresholds.json`` form (:meth:`GateSpec.to_json`)."""


def keep_most_probable(absent: np.ndarray, probs: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """The "at least one class per image" rule: ``absent`` (n, 4 bool) with, in every image
    whose ``drawn`` (non-empty) masks are all judged absent, the drawn one of highest presence
    score (``probs``, n x 4) set back to False (every real image has a class)."""
    out = absent.copy()
    rescue = np.flatnonzero(drawn.any(1) & ~(drawn & ~absent).any(1))
    best = np.argmax(np.where(drawn[rescue], probs[rescue], -np.inf), axis=1)
    out[rescue, best] = False
    return out


def keep(scores: np.ndarray, thresholds: Mapping[str, float] | float, drawn: np.ndarray | None = None) -> np.ndarray:
    """Which pairs a gate keeps: score >= the class threshold; with ``drawn`` (pairs whose mask
    is not empty) the "at least one class per image" rule too (:func:`keep_most_probable`).

    ``thresholds``: class -> threshold, or one for every class. The one decision that
    ``predict`` (:func:`gate`), ``tune-threshold`` and the report's breakdown all make.

    Raises:
        CloudpipeError: a threshold that is not a number in [0, 1] (NaN would blank every pair);
            ``scores`` not (n, 4) or holding NaN.
    """
    if isinstance(thresholds, Mapping):
        cut = np.array(list(check_thresholds(thresholds).values()))
    else:
        cut = np.float64(check_threshold(thresholds, "the"))
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(active().classes):
        raise BadValue(f"scores must be (n, {len(active().classes)}): one column per class ({', '.join(active().classes)}), "
                             f"got shape {scores.shape}")
    if np.isnan(scores).any():
        raise BadValue("scores hold NaN: a presence score must be a number")
    kept = scores >= cut
    return kept if drawn is None else ~keep_most_probable(~kept, scores, drawn)


def gate(seg: pd.DataFrame, probs: pd.DataFrame, thresholds: dict[str, float], at_least_one: bool = False) -> pd.DataFrame:
    """Blank the masks of the long frame ``seg`` (``Image_Label, EncodedPixels, image,
    class_name``) whose presence probability (``probs``, indexed by image, a column per class) is
    below their class threshold (:func:`keep`; ``at_least_one``: :func:`keep_most_probable` too).

    Returns:
        ``seg`` with ``EncodedPixels`` emptied below the threshold (others untouched), plus
        boolean columns ``absent`` (probability below threshold, unless the rule kept it) and
        ``blanked`` (a non-empty mask was removed).

    Raises:
        BadValue: ``seg`` or ``probs`` not the frames described; a probability that is NaN or
            outside [0, 1] (naming its image and class); no probabilities for some images.
    """
    columns = ["Image_Label", "EncodedPixels", "image", "class_name"]
    if not isinstance(seg, pd.DataFrame) or any(c not in seg.columns for c in columns):
        got = list(seg.columns) if isinstance(seg, pd.DataFrame) else type(seg).__name__
        raise BadValue(f"gate: seg must be a long frame with columns {', '.join(columns)} (one row per image and "
                             f"class, as cloudpipe.data.kaggle reads a submission), got {got}")
    if not isinstance(probs, pd.DataFrame) or list(probs.columns) != list(active().classes):
        got = list(probs.columns) if isinstance(probs, pd.DataFrame) else type(probs).__name__
        raise BadValue(f"gate: probs must be a frame indexed by image with columns {', '.join(active().classes)}, got {got}")
    check_numbers(probs, "gate: probs", low=0, high=1, fix="probs are presence probabilities in [0, 1]")
    p = probs.reindex(seg["image"])
    if p.isna().any().any():
        raise CloudpipeError("no probabilities for some segmentation images")
    k = seg["class_name"].map({c: i for i, c in enumerate(active().classes)}).to_numpy()
    image, names = pd.factorize(seg["image"])
    scores = np.full((len(names), len(active().classes)), -np.inf)  # a pair missing from seg is neither kept nor drawn
    drawn = np.zeros(scores.shape, bool)
    scores[image, k] = p.to_numpy()[np.arange(len(seg)), k]
    drawn[image, k] = (seg["EncodedPixels"] != "").to_numpy()
    out = seg.copy()
    out["absent"] = ~keep(scores, thresholds, drawn if at_least_one else None)[image, k]
    out["blanked"] = out["absent"] & (out["EncodedPixels"] != "")
    out.loc[out["absent"], "EncodedPixels"] = ""
    return out


@dataclass(frozen=True)
class GateSpec:
    """How ``predict`` gates, as ``thresholds.json`` records it: per class the threshold and the
    blend of sources its score is (default: the classifier alone), whether
    :func:`keep_most_probable` applies, and how pixel statistics are computed (None: no gate uses one)."""

    thresholds: dict[str, float]
    gates: dict[str, Gate] = field(default_factory=lambda: {c: {CLASSIFIER: 1.0} for c in active().classes})
    at_least_one: bool = False
    pixel: PixelStats | None = None

    def __post_init__(self) -> None:
        """Refuse thresholds that are not numbers in [0, 1] (2.0 would blank every pair, -1.0 none)."""
        check_thresholds(self.thresholds)

    @property
    def sources(self) -> list[str]:
        """The sources some class is gated on, in the order the classes first name them."""
        return list(dict.fromkeys(s for c in active().classes for s in self.gates[c]))

    def keep(self, scores: np.ndarray, drawn: np.ndarray) -> np.ndarray:
        """Which pairs this gate keeps (:func:`keep`), given the blended ``scores`` (n, 4) and
        the pairs ``drawn`` (mask not empty: the at-least-one rule's candidates, when it applies)."""
        return keep(scores, self.thresholds, drawn if self.at_least_one else None)

    def to_json(self) -> dict:
        """``{"format": 1, class: threshold, "gate": {class: {source: weight}}, "at_least_one": bool}``,
        plus ``top_k`` and ``area_threshold`` when a pixel statistic is used (:func:`thresholds_file`)."""
        pixel = {} if self.pixel is None else {"top_k": self.pixel.top_k, "area_threshold": self.pixel.area_threshold}
        return dump_model(thresholds_file(active().classes), {"format": THRESHOLDS_FORMAT, **self.thresholds, "gate": self.gates,
                                           "at_least_one": self.at_least_one, **pixel}, "thresholds",
                          context={"known": self.sources})

    @classmethod
    def from_json(cls, data: object, known: Sequence[str]) -> GateSpec:
        """Read :meth:`to_json`'s form (:func:`thresholds_file`); a file without ``gate`` gates
        on the classifier alone, one without ``top_k`` or ``area_threshold`` on no pixel statistic.

        Raises:
            CloudpipeError: one line naming the first wrong field (bad thresholds, an unknown
                source, weights not summing to 1...).
        """
        file = read_model(thresholds_file(active().classes), data, "thresholds", context={"known": known})
        thresholds = {c: getattr(file, c) for c in active().classes}
        gates = cls(thresholds).gates if file.gate is None else {c: dict(getattr(file.gate, c)) for c in active().classes}
        pixel = PixelStats(file.top_k, file.area_threshold) if {"top_k", "area_threshold"} & file.model_fields_set else None
        return cls(thresholds, gates, file.at_least_one, pixel)


def _check_blend(weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
    """Refuse a class's blend whose sources are not in ``context["known"]`` or whose weights do
    not sum to 1."""
    known = info.context["known"]
    unknown = [s for s in weights if s not in known]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if abs(sum(weights.values()) - 1) > 1e-6:
        raise ValueError("gate weights must sum to 1")
    return weights


Blend = Annotated[dict[str, Annotated[float, Field(ge=0), WHOLE_KEPT]], Field(min_length=1), AfterValidator(_check_blend)]


class _Format(FileModel):
    """``thresholds.json``'s first key."""

    format: Literal[1] = Field(THRESHOLDS_FORMAT, description=f"must be {THRESHOLDS_FORMAT} (tune them again with this "
                                                              "cloudpipe)")  # a file without one: hand-written or older


@cache
def thresholds_file(classes: tuple[str, ...]) -> type[FileModel]:
    """What ``thresholds.json`` of a profile with ``classes`` must hold, in its order
    (:meth:`GateSpec.to_json` writes it; keys it does not name, such as those tune records, are
    allowed). Validate with ``context={"known": source names}``."""
    gates = per_class("Gates", classes, Blend, "must be {source: weight}, weights >= 0 summing to 1")
    return create_model(
        "ThresholdsFile", __base__=per_class("ClassThresholds", classes, Annotated[float, Field(ge=0, le=1), WHOLE_KEPT],
                                             "must be a number in [0, 1]", base=_Format),
        gate=(gates, Field(None, description="must give every class {source: weight}")),  # None: not given (null is refused)
        at_least_one=(bool, Field(False, description="must be true or false")),  # "false" is a string, bool("false") True
        top_k=(int, Field(PixelStats.top_k, ge=1, description="must be a whole number >= 1")),
        area_threshold=(Annotated[float, WHOLE_KEPT], Field(PixelStats.area_threshold, ge=0, le=1,
                                                            description="must be a number in [0, 1]")))
