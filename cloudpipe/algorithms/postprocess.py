"""Post-processing of segmentation probabilities into masks: an ordered list of steps, each
with one parameter per class and a search grid, tuned per class on Kaggle Dice.

A step turns the current mask (None before the first step) and the class's uint8
probabilities (H, W) into a new mask. :class:`PostProcess` is the ordered list with the chosen
value of every step for every class; it is saved as JSON with a format version
(:meth:`PostProcess.to_dict`). Tuning scores every combination of the steps' grids: a tree
walk shares each step's output among all the values of the steps after it, and a step may give
all of its grid's masks at once (:meth:`Step.variants`: one connected-components pass serves
every minimum size). Classes are independent, so the best combination per class is exact.

Steps are registered by name in :data:`STEPS`; a new step is a subclass with a ``name``, a
``default`` value, a ``grid``, ``apply`` and (when cheaper) ``variants``; a step whose values
are not any finite number (a range, pairs, names) also has ``value``, their pydantic type, and
``what`` they are in words: ``seg_postprocess.json`` is read by a model built from them
(:func:`postprocess_file`).
:func:`make_steps` builds a list of steps from their names (``predict-seg --steps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union

import cv2
import numpy as np
from pydantic import Field, Strict, TypeAdapter, ValidationError, create_model

from cloudpipe.algorithms.robust import DefaultKept, Rule, choose_explained
from cloudpipe.core.choices import DEFAULT_STEPS
from cloudpipe.core.errors import BadType, BadValue, CloudpipeError
from cloudpipe.core.masks import remove_small_components
from cloudpipe.core.metric import dice_score
from cloudpipe.core.models import WHOLE_KEPT, FileModel, dump_model, error_line, per_class, read_model
from cloudpipe.core.profile import active

FORMAT_VERSION = 2
Probability = Annotated[float, Strict(), Field(ge=0, le=1), WHOLE_KEPT]
Size = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False), WHOLE_KEPT]


@cache
def _adapter(value: Any) -> TypeAdapter:
    """A validator of one step value type (built once per type)."""
    return TypeAdapter(value)


@dataclass(frozen=True)
class Step:
    """One post-processing step: a parameter per class and the grid it is tuned over."""

    name: ClassVar[str]
    default: ClassVar[float]
    reads_probs: ClassVar[bool] = False
    """Whether the step looks at the probabilities (else it only transforms the mask, and an
    empty mask stays empty through it)."""
    ordered: ClassVar[bool] = True
    """Whether neighbours in the grid are neighbouring values (numbers in order), so that the
    middle of a run of near-best values means something (the robust choice, :func:`choose`)."""
    grid: tuple = ()

    def __post_init__(self):
        if not self.grid:
            raise CloudpipeError(f"post-processing step {self.name!r} has an empty grid")

    def apply(self, mask: np.ndarray | None, probs: np.ndarray, value) -> np.ndarray:
        """The 0/1 uint8 mask (H, W) after this step with parameter ``value``."""
        raise NotImplementedError

    def variants(self, mask: np.ndarray | None, probs: np.ndarray) -> list[np.ndarray]:
        """The mask after this step for every value of the grid, in grid order; values that
        give the same mask may give the same object (tuning then scores it once)."""
        return [self.apply(mask, probs, value) for value in self.grid]

    value: ClassVar[Any] = Annotated[float, Strict(), Field(allow_inf_nan=False), WHOLE_KEPT]
    """The type of one value (a pydantic type, checked strictly: ``"0.5"`` is no number)."""
    what: ClassVar[str] = "a finite number"
    """What one value is, in words: ``a number in [0, 1]``."""

    @classmethod
    def parse(cls, value: object):
        """A value (or grid entry) as read back from JSON, or as given in code; a BadValue when it
        is not a :attr:`value`."""
        try:
            return _adapter(cls.value).validate_python(value)
        except ValidationError as err:
            raise BadValue(error_line(f"{cls.name} value", err, rule=f"must be {cls.what}")) from None

    @staticmethod
    def show(value) -> str:
        """A value as text, e.g. ``0.5`` or ``hull``."""
        return f"{value:g}" if isinstance(value, (int, float)) else " ".join(map(Step.show, value)) \
            if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Threshold(Step):
    """Pixel threshold on the probability: ``p >= value`` (probabilities stored as uint8)."""

    name: ClassVar[str] = "threshold"
    default: ClassVar[float] = 0.5
    reads_probs: ClassVar[bool] = True
    value: ClassVar[Any] = Probability
    what: ClassVar[str] = "a number in [0, 1]"
    grid: tuple = (0.3, 0.4, 0.5, 0.6, 0.7)

    def apply(self, mask, probs, value):
        return binarize(probs, value)


@dataclass(frozen=True)
class MinSize(Step):
    """Drop 8-connected components smaller than ``value`` pixels (at the mask's size)."""

    name: ClassVar[str] = "min_size"
    default: ClassVar[float] = 0
    value: ClassVar[Any] = Size
    what: ClassVar[str] = "a finite number >= 0"
    # Pixels at 350 x 525: finishers used 5,000-21,000, and tuned on real clouds the minimum
    # reached 10,000 (the old grid's top) for every class, so the grid goes well past it.
    grid: tuple = (0, 500, 1000, 2500, 5000, 7500, 10000, 12500, 15000, 17500, 20000, 25000, 30000, 40000, 50000, 60000)

    def apply(self, mask, probs, value):
        return remove_small_components(mask, int(value))

    def variants(self, mask, probs):
        if not mask.any():
            return [mask] * len(self.grid)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, np.uint8), connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA]
        out, kept_before = [], None
        for value in self.grid:
            kept = area[1:] >= value
            if kept_before is None or not np.array_equal(kept, kept_before):  # else the same mask again
                keep = np.zeros(count, np.uint8)
                keep[1:] = kept
                drawn, kept_before = keep[labels], kept
            out.append(drawn)
        return out


@dataclass(frozen=True)
class TopArea(Step):
    """The gate of the 2nd place's "triplet" rule: keep the mask only when at least ``area``
    pixels have probability >= ``top``, else blank it; value ``(top, area)``. After a
    :class:`Threshold` (the triplet's lower, drawing threshold) it makes the whole rule; as the
    first step it draws the mask at ``top``. ``area`` 0 keeps every mask."""

    name: ClassVar[str] = "top_area"
    default: ClassVar[tuple] = (0.5, 0.0)
    reads_probs: ClassVar[bool] = True
    ordered: ClassVar[bool] = False  # pairs: grid neighbours are not neighbouring rules
    value: ClassVar[Any] = Annotated[tuple[Probability, Size], Strict(False)]  # a JSON list is a pair
    what: ClassVar[str] = "a pair [top in [0, 1], finite area >= 0]"
    grid: tuple = ((0.5, 0.0), *((t, float(a)) for t in (0.5, 0.6, 0.7, 0.8) for a in (1000, 2500, 5000, 10000, 15000)))

    def apply(self, mask, probs, value):
        top, area = value
        above = binarize(probs, top)
        mask = above if mask is None else mask
        return mask if np.count_nonzero(above) >= area else np.zeros_like(mask)

    def variants(self, mask, probs):
        if mask is None:
            return super().variants(mask, probs)
        counts = {t: np.count_nonzero(binarize(probs, t)) for t in {t for t, _ in self.grid}}
        empty = np.zeros_like(mask)
        return [mask if counts[t] >= a else empty for t, a in self.grid]


SHAPES = ("mask", "hull", "box")
DRAWN_ONE_BY_ONE = 48
"""Tuning draws the hulls or boxes of up to this many components one by one (cheaper than
drawing whole masks); a kept set of more is drawn whole, as :meth:`Shape.apply` draws it."""


@dataclass(frozen=True)
class Shape(Step):
    """Redraw every 8-connected component as predicted (``mask``), as its convex hull
    (``hull``) or as its bounding box (``box``); real masks are unions of rectangles."""

    name: ClassVar[str] = "shape"
    default: ClassVar[str] = "mask"
    ordered: ClassVar[bool] = False
    value: ClassVar[Any] = Literal[SHAPES]
    what: ClassVar[str] = f"one of {', '.join(SHAPES)}"
    grid: tuple = SHAPES

    def __post_init__(self):
        super().__post_init__()
        for value in self.grid:
            self.parse(value)

    def apply(self, mask, probs, value):
        if value == "mask" or not mask.any():
            return mask
        contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = np.zeros_like(mask)
        for contour in contours:
            if value == "hull":
                cv2.fillPoly(out, [cv2.convexHull(contour)], 1)
            else:
                x, y, w, h = cv2.boundingRect(contour)
                out[y:y + h, x:x + w] = 1
        return out | mask  # a hull's outline never loses a pixel of the component


STEPS: dict[str, type[Step]] = {s.name: s for s in (Threshold, TopArea, MinSize, Shape)}


def make_steps(names: Sequence[str]) -> tuple[Step, ...]:
    """The steps named (in order), each with its default grid, e.g. ``["threshold", "shape"]``.

    Raises:
        CloudpipeError: an unknown or repeated name, or a list whose first step does not read
            the probabilities.
    """
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise CloudpipeError(f"unknown post-processing step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")
    if len(set(names)) != len(names):
        raise CloudpipeError(f"post-processing steps repeat: {', '.join(names)}")
    steps = tuple(STEPS[n]() for n in names)
    PostProcess(steps)  # checks the order
    return steps


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 probabilities (0..255) -> 0/1 mask of ``p >= threshold``."""
    return (probs >= round(threshold * 255)).astype(np.uint8)


@dataclass(frozen=True)
class PostProcess:
    """The ordered steps (the first must read the probabilities) and, per class, the value of
    each step."""

    steps: tuple[Step, ...] = tuple(STEPS[name]() for name in DEFAULT_STEPS)
    values: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self):
        if not self.steps or not self.steps[0].reads_probs:
            raise CloudpipeError("post-processing must start with a step that reads the probabilities (e.g. threshold)")
        if not self.values:
            object.__setattr__(self, "values", {c: tuple(s.default for s in self.steps) for c in active().classes})
        for c in active().classes:
            if len(self.values.get(c, ())) != len(self.steps):
                raise CloudpipeError(f"post-processing needs one value per step for {c}")
            for step, value in zip(self.steps, self.values[c]):
                step.parse(value)  # in the step's bounds (a threshold of 2.0 would blank every mask)

    def apply(self, probs: np.ndarray, k: int) -> np.ndarray:
        """0/1 mask of class ``k`` (0..3) from its probabilities (H, W) as stores hold them: uint8,
        probability x 255 (float probabilities: ``(p * 255).round().astype(np.uint8)``).

        Raises:
            BadType: ``probs`` not uint8 (a TypeError). BadValue: not 2-D, or ``k`` not a class
                index (a ValueError).
        """
        probs = np.asarray(probs)
        if probs.dtype != np.uint8:
            raise BadType(f"probs must be uint8 (probability x 255, as probability stores hold them), got {probs.dtype}; "
                            "convert float probabilities with (p * 255).round().astype(np.uint8)")
        if probs.ndim != 2:
            raise BadValue(f"probs must be one class's (H, W) map, got shape {probs.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(active().classes):
            raise BadValue(f"k must be a class index 0..{len(active().classes) - 1}, got {k!r}")
        mask = None
        for step, value in zip(self.steps, self.values[active().classes[k]]):
            mask = step.apply(mask, probs, value)
        return mask

    def describe(self) -> str:
        """One line: each class's values, e.g. ``Fish threshold 0.5 min_size 5000``."""
        return ", ".join(f"{c} " + " ".join(f"{s.name} {s.show(v)}" for s, v in zip(self.steps, self.values[c]))
                         for c in active().classes)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"format": 2, "steps": [{"step", "grid", "values": {class: v}}]}`` (:func:`postprocess_file`)."""
        return dump_model(postprocess_file(active().classes), {"format": FORMAT_VERSION, "steps": [
            {"step": s.name, "grid": list(s.grid), "values": {c: self.values[c][i] for c in active().classes}}
            for i, s in enumerate(self.steps)]}, "post-processing")

    @classmethod
    def from_dict(cls, data: object) -> PostProcess:
        """Rebuild from :meth:`to_dict`'s form.

        Raises:
            CloudpipeError: one line naming the first wrong field (another format version, an
                unknown step, a value missing or out of its step's range...).
        """
        file = read_model(postprocess_file(active().classes), data, "post-processing")
        steps = tuple(STEPS[entry.step](grid=tuple(entry.grid)) for entry in file.steps)
        return cls(steps, {c: tuple(getattr(entry.values, c) for entry in file.steps) for c in active().classes})


def _entry(step: type[Step], classes: tuple[str, ...]) -> type[FileModel]:
    """The model of one step's entry in ``seg_postprocess.json``."""
    return create_model(
        f"{step.__name__}Entry", __base__=FileModel, step=(Literal[step.name], ...),
        grid=(list[step.value], Field(min_length=1, description=f"must be a non-empty list, each {step.what}")),
        values=(per_class(f"{step.__name__}Values", classes, step.value, f"must be {step.what}"),
                Field(description="must give every class a value")))


@cache
def postprocess_file(classes: tuple[str, ...]) -> type[FileModel]:
    """What ``seg_postprocess.json`` of a profile with ``classes`` must hold (:meth:`PostProcess.to_dict`)."""
    entry = Annotated[Union[tuple(_entry(s, classes) for s in STEPS.values())], Field(discriminator="step")]  # noqa: UP007 (built)
    return create_model(
        "PostProcessFile", __base__=FileModel,
        format=(Literal[2], Field(description=f"must be {FORMAT_VERSION}: run predict-seg --split val again to tune and "
                                              "save it")),
        steps=(list[entry], Field(description=f"must be a list of {{\"step\": one of {', '.join(STEPS)}, \"grid\": [...], "
                                              "\"values\": {class: value}}")))


def grid_stats(steps: Sequence[Step], probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection with ``truth`` (0/1, H x W) and predicted area of one (image, class) pair,
    of uint8 ``probs`` (H, W), for every combination of the steps' grids: two int64 arrays of
    shape ``tuple(len(s.grid) for s in steps)``.

    A tree walk shares each step's output among all the values of the steps after it. Where
    the steps left are :class:`MinSize` and/or :class:`Shape` (in that order), their whole grid
    is scored from one connected-components pass (:func:`_component_stats`) instead of drawing
    each mask: the same figures, exactly.
    """
    shape = tuple(len(s.grid) for s in steps)
    inter, area = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    truth = np.ascontiguousarray(truth, dtype=bool)
    tails = [_component_tail(steps[level:]) for level in range(len(steps) + 1)]

    def walk(level: int, mask: np.ndarray | None, index: tuple) -> None:
        if mask is not None and not mask.any() and not any(s.reads_probs for s in steps[level:]):
            return  # empty from here on: zeros
        if level == len(steps):
            on = mask.astype(bool)
            inter[index], area[index] = np.count_nonzero(on & truth), np.count_nonzero(on)
            return
        if mask is not None and tails[level] is not None:
            inter[index], area[index] = _component_stats(*tails[level], mask, truth)
            return
        first: dict[int, int] = {}  # id of a variant -> the first grid index that gave it
        for j, variant in enumerate(steps[level].variants(mask, probs)):
            if id(variant) in first:  # the same mask: its scores are those already computed
                inter[(*index, j)], area[(*index, j)] = inter[(*index, first[id(variant)])], area[(*index, first[id(variant)])]
                continue
            first[id(variant)] = j
            walk(level + 1, variant, (*index, j))

    walk(0, None, ())
    return inter, area


def _component_tail(steps: Sequence[Step]) -> tuple[tuple | None, tuple | None] | None:
    """``(min_size grid, shape grid)`` (None for a step that is not there) when ``steps`` is
    ``[min_size][, shape]`` exactly (not subclasses, which may draw otherwise), else None."""
    kinds = [type(s) for s in steps]
    if kinds not in ([MinSize], [Shape], [MinSize, Shape]):
        return None
    return (steps[0].grid if kinds[0] is MinSize else None), (steps[-1].grid if kinds[-1] is Shape else None)


def _component_stats(sizes: tuple | None, shapes: tuple | None, mask: np.ndarray,
                     truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and area for every minimum size x shape (either axis absent when its grid
    is None) from one connected-components pass over ``mask``: what :class:`MinSize` then
    :class:`Shape` would draw, without drawing each combination.

    The components kept by a minimum size are those of at least that area: a prefix of the
    components sorted by decreasing area. ``mask`` is additive over components, so its figures
    are sums of per-component counts; hulls and boxes may overlap, so their figures come from
    :func:`_drawn_prefixes` (a prefix of more than :data:`DRAWN_ONE_BY_ONE` components, as many
    specks of noise give, is drawn whole instead). A component inside another's hole adds
    nothing while the outer one is kept, as the outer hull or box covers it, which is why
    :meth:`Shape.apply` (external contours only) draws the same union.
    """
    # 16-bit labels where they cannot overflow (8-connected components are at most one per 2 x 2 block): less to write
    small = -(-mask.shape[0] // 2) * -(-mask.shape[1] // 2) < 2**16
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, np.uint8), connectivity=8,
                                                               ltype=cv2.CV_16U if small else cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    hits = np.bincount(labels[truth], minlength=count)[1:].astype(np.int64)
    order = np.argsort(-areas, kind="stable")
    # kept[j]: how many of the largest components minimum size j keeps (area >= size).
    kept = np.array([np.count_nonzero(areas >= v) for v in (sizes or (0,))])
    inter, area = np.zeros((len(kept), len(shapes or "-")), np.int64), np.zeros((len(kept), len(shapes or "-")), np.int64)
    few = kept <= DRAWN_ONE_BY_ONE
    for s, shape in enumerate(shapes or ("mask",)):
        if shape == "mask":
            prefix_inter, prefix_area = hits[order].cumsum(), areas[order].cumsum()
        else:
            prefix_inter, prefix_area = _drawn_prefixes(shape, order[: kept[few].max(initial=0)], labels, stats, truth)
        some = few & (kept > 0)  # a minimum size that keeps nothing scores zeros
        inter[some, s], area[some, s] = prefix_inter[kept[some] - 1], prefix_area[kept[some] - 1]
        drawn: dict[int, tuple[int, int]] = {}
        for j in np.flatnonzero(~few):  # many components: the whole mask drawn by Shape.apply, once per kept set
            if kept[j] not in drawn:
                keep = np.zeros(count, np.uint8)
                keep[order[: kept[j]] + 1] = 1
                on = Shape().apply(keep[labels], None, shape).view(bool)
                drawn[kept[j]] = np.count_nonzero(on & truth), np.count_nonzero(on)
            inter[j, s], area[j, s] = drawn[kept[j]]
    axes = (() if sizes is not None else (0,)) + (() if shapes is not None else (1,))
    return inter.squeeze(axes) if axes else inter, area.squeeze(axes) if axes else area


def _drawn_prefixes(shape: str, order: np.ndarray, labels: np.ndarray, stats: np.ndarray,
                    truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and area of the union of the first 1, 2, ... components of ``order``,
    each drawn as ``shape`` (``hull`` or ``box``) the way :meth:`Shape.apply` draws it (its
    external contour's hull or bounding box, or'ed with its pixels), largest first, onto one
    canvas, counting only the pixels each adds. A component is drawn inside its bounding box,
    so one whose box meets no earlier box adds all of its pixels."""
    height, width = labels.shape
    canvas = np.zeros(labels.shape, bool)
    left, top = stats[order + 1, 0], stats[order + 1, 1]
    right, bottom = left + stats[order + 1, 2], top + stats[order + 1, 3]
    added = np.zeros((2, len(order)), np.int64)  # pixels of the truth and in all that each component adds
    sums = cv2.integral(truth.view(np.uint8), sdepth=cv2.CV_32S) if shape == "box" else None
    for i, c in enumerate(order):
        y0, y1, x0, x1 = top[i], bottom[i], left[i], right[i]
        meets = np.any((top[:i] < y1) & (bottom[:i] > y0) & (left[:i] < x1) & (right[:i] > x0))
        if shape == "box":
            if not meets:  # the whole box is new: its truth from the integral image
                added[:, i] = sums[y1, x1] - sums[y0, x1] - sums[y1, x0] + sums[y0, x0], (y1 - y0) * (x1 - x0)
                canvas[y0:y1, x0:x1] = True
                continue
            drawn = np.ones((y1 - y0, x1 - x0), bool)
        else:  # the component alone, with a margin of one pixel, traced as findContours traces it in the mask
            m0, m1, n0, n1 = max(y0 - 1, 0), min(y1 + 1, height), max(x0 - 1, 0), min(x1 + 1, width)
            pixels = (labels[m0:m1, n0:n1] == c + 1).view(np.uint8)
            contours, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            filled = np.zeros_like(pixels)
            cv2.fillPoly(filled, [cv2.convexHull(contours[0])], 1)
            drawn = (filled | pixels).view(bool)[y0 - m0:y1 - m0, x0 - n0:x1 - n0]  # the hull lies in the box
        new = drawn & ~canvas[y0:y1, x0:x1] if meets else drawn
        added[:, i] = np.count_nonzero(new & truth[y0:y1, x0:x1]), np.count_nonzero(new)
        canvas[y0:y1, x0:x1] |= drawn
    return added[0].cumsum(), added[1].cumsum()


def choose(steps: Sequence[Step], inter: np.ndarray, area: np.ndarray, truth_area: np.ndarray,
           rule: Rule = "best") -> tuple[PostProcess, np.ndarray]:
    """The combination of every class chosen on mean Dice by ``rule``: ``best``, ties to the
    first in grid order; ``robust``, the combination nearest the middle of the near-best ones
    (the grid indices of the :attr:`~Step.ordered` steps scaled to [0, 1]; the best of the
    others), or the steps' defaults unless that choice beats them on held-out images
    (:func:`~cloudpipe.algorithms.robust.choose_index`), from :func:`grid_stats`' ``inter`` and
    ``area`` (n, 4, *grid) and the truth areas (n, 4). Returns the choice and the mean Dice of
    every combination, (4, *grid).
    """
    post, dice, _ = choose_explained_steps(steps, inter, area, truth_area, rule)
    return post, dice


def choose_explained_steps(steps: Sequence[Step], inter: np.ndarray, area: np.ndarray, truth_area: np.ndarray,
                           rule: Rule = "best") -> tuple[PostProcess, np.ndarray, dict[str, DefaultKept]]:
    """:func:`choose`, and per class where ``robust`` kept the steps' defaults over a better
    combination, why (:class:`~cloudpipe.algorithms.robust.DefaultKept`)."""
    extra = (slice(None), slice(None)) + (None,) * (inter.ndim - 2)
    per_image = dice_score(inter, area, np.broadcast_to(truth_area[extra], inter.shape))
    grid = per_image.shape[2:]
    coords = np.stack([i / max(n - 1, 1) * s.ordered for i, n, s in zip(np.indices(grid), grid, steps)],
                      axis=-1).reshape(-1, len(grid))
    at_default = default_index(steps)
    default = None if at_default is None else int(np.ravel_multi_index(at_default, grid))
    def name(index: int) -> str:
        return " ".join(f"{s.name} {s.show(s.grid[j])}" for s, j in zip(steps, np.unravel_index(index, grid)))

    values, kept = {}, {}
    for k, c in enumerate(active().classes):
        chosen, why = choose_explained(per_image[:, k].reshape(len(per_image), -1), rule, default=default, coords=coords,
                                       name=name)
        values[c] = tuple(s.grid[j] for s, j in zip(steps, np.unravel_index(chosen, grid)))
        if why is not None and why.costs:
            kept[c] = why
    return PostProcess(tuple(steps), values), per_image.mean(axis=0), kept


def chosen_dice(post: PostProcess, dice: np.ndarray) -> np.ndarray:
    """The mean Dice (4,) of each class's chosen combination, from :func:`choose`'s (4, *grid)."""
    return np.array([dice[(k, *(list(s.grid).index(v) for s, v in zip(post.steps, post.values[c])))]
                     for k, c in enumerate(active().classes)])


def default_index(steps: Sequence[Step]) -> tuple[int, ...] | None:
    """The grid index of every step's default value (None when a default is not in its grid)."""
    try:
        return tuple(list(s.grid).index(s.default) for s in steps)
    except ValueError:
        return None
