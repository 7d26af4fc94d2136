"""Presence sources, registered by name.

A *source* gives every (image, class) pair a presence score in [0, 1]; a gate blends sources per
class (:mod:`cloudpipe.algorithms.presence`). Each source is one :class:`Source` object — its
name, the input file it reads (a :class:`SourceInput`: the command-line option that gives it and
how it is read) and its score — registered by a module of this package, which is found and
imported on first use. Gating, tuning, the report, the commands' options and help all read
:func:`registry`, so a new source, one that needs a new input file included, is one module here
(plus its test); nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from cloudpipe.algorithms.presence import PixelStats


@dataclass(frozen=True)
class SourceInput:
    """A file presence sources read, given to ``predict`` (test images) and ``tune-threshold``
    (validation images) by one option.

    Attributes:
        name: the option's parameter name and the key of :attr:`GateInputs.files`.
        option: the command-line option, e.g. ``--seg-store``.
        what: what the file is, for help and errors (``the segmentation probabilities (predict-seg's <stem>_probs.npy)``).
        read: ``(file, images, split) -> data`` that the input's sources score, rows in
            ``images`` order, of the ``split`` (``val`` or ``test``) images.
        beside: where ``predict-seg`` writes the file beside its CSV (None: made elsewhere).
    """

    name: str
    option: str
    what: str
    read: Callable[[Path, list[str], str], Any]
    beside: Callable[[Path], Path] | None = None


@dataclass(frozen=True)
class Source:
    """One presence source.

    Attributes:
        name: its name in ``--sources``, ``thresholds.json`` and the tables.
        help: one line for the commands' help.
        input: the file it reads; None for the classifier, which the commands run themselves.
        score: ``(data read from its input, pixel statistics' settings) -> (n, 4)`` scores.
        pixel: whether its score depends on the pixel statistics' settings (then recorded in
            ``thresholds.json``).
    """

    name: str
    help: str
    input: SourceInput | None = None
    score: Callable[[Any, PixelStats], np.ndarray] | None = None
    pixel: bool = False


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source (a module of this package calls this when imported).

    Raises:
        ValueError: a name taken, or an input name shared with another input's option.
    """
    if source.name in _REGISTRY:
        raise ValueError(f"presence source {source.name!r} is registered twice")
    if source.input is not None:
        other = next((s.input for s in _REGISTRY.values() if s.input is not None and s.input.name == source.input.name), None)
        if other is not None and other != source.input:
            raise ValueError(f"input {source.input.name!r} of source {source.name!r} differs from the registered one")
    _REGISTRY[source.name] = source
    return source


def registry() -> dict[str, Source]:
    """Every source by name, in registration order (the classifier first)."""
    if not _REGISTRY:
        for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "classifier", m.name)):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(_REGISTRY)


def source_inputs() -> dict[str, SourceInput]:
    """Every input file some source reads, by name, in registration order."""
    return {s.input.name: s.input for s in registry().values() if s.input is not None}
