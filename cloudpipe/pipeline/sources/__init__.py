"""Presence sources, registered by name.

A *source* gives every (image, class) pair a presence score in [0, 1]; a gate blends sources per
class (:mod:`cloudpipe.algorithms.presence`). Each :class:`Source` (its name, the
:class:`SourceInput` it reads and its score) is registered by a module of this package, imported
on first use. Everything else (gating, tuning, the commands' options, the files ``predict-seg``
writes, the bundle's notebook) reads :func:`registry`, so a new source, one whose new input
``predict-seg`` writes included, is one module here and its file's name in :mod:`cloudpipe.data.beside`.
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
    import pandas as pd

    from cloudpipe.algorithms.presence import PixelStats
    from cloudpipe.data.probstore import StoreInfo
    from cloudpipe.pipeline.ensemble import Ensemble

PREDICT_SEG = "predict-seg"
Writer = Callable[[Path], object]


@dataclass(frozen=True)
class Predicted:
    """What ``predict-seg`` computed, for the :class:`Producer` of each input it writes: the
    uint8 probabilities, their :class:`StoreInfo`, and the heads' mean presence (when every model has one)."""

    store: np.ndarray
    info: StoreInfo
    presence: pd.DataFrame | None = None


@dataclass(frozen=True)
class Producer:
    """How a command writes a source input beside its output.

    Attributes:
        beside: the input's path beside the command's ``--out`` (a name of :mod:`cloudpipe.data.beside`).
        write: what the command computed (:class:`Predicted`) -> one writer per file, the input's
            then its companions'; None: nothing to write (e.g. no head).
        with_store: written with the probability store: ``predict-seg --no-keep-store`` skips it
            (and removes an earlier one, which would no longer match the masks).
        command: the command that writes it.
    """

    beside: Callable[[Path], Path]
    write: Callable[[Predicted], tuple[Writer, ...] | None]
    with_store: bool = False
    command: str = PREDICT_SEG


@dataclass(frozen=True)
class SourceInput:
    """A file presence sources read, given to ``predict`` (test images) and ``tune-threshold``
    (validation images) by one option.

    Attributes:
        name: the option's parameter name and the key of :attr:`GateInputs.files`.
        option, what: the command-line option, and what the file is (for help and errors).
        read: ``(file, images, split) -> data`` that the input's sources score, rows in
            ``images`` order, of the ``split`` (``val`` or ``test``) images.
        producer: the command that writes the file and how (None: made elsewhere).
        companions: the file -> the files read with it (a store's JSON).
        runs: the file -> the segmentation runs (and weights) it records having been made from,
            which a ``thresholds.json`` tuned on it records and checks (None: it records none).
    """

    name: str
    option: str
    what: str
    read: Callable[[Path, list[str], str], Any]
    producer: Producer | None = None
    companions: Callable[[Path], tuple[Path, ...]] = lambda file: ()
    runs: Callable[[Path], Ensemble] | None = None

    def files(self, file: Path) -> tuple[Path, ...]:
        """The input's file and its companions."""
        return (Path(file), *self.companions(Path(file)))

    def files_beside(self, out: Path) -> tuple[Path, ...]:
        """The files its producer writes beside ``out``: the input's, then its companions'."""
        return self.files(self.producer.beside(Path(out)))


@dataclass(frozen=True)
class Source:
    """One presence source.

    Attributes:
        name, help: its name in ``--sources``, ``thresholds.json`` and the tables; one line of help.
        input: the file it reads; None for the classifier, which the commands run themselves.
        score: ``(data read from its input, pixel statistics' settings) -> (n, 4)`` scores.
        pixel: whether its score depends on the pixel statistics' settings (recorded then).
    """

    name: str
    help: str
    input: SourceInput | None = None
    score: Callable[[Any, PixelStats], np.ndarray] | None = None
    pixel: bool = False


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source (a module of this package calls this when imported); a name taken, or an
    input name shared with another input, is a ValueError."""
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


def produced_by(command: str) -> list[SourceInput]:
    """The inputs ``command`` writes beside its output, those written with the probability store first."""
    made = [i for i in source_inputs().values() if i.producer is not None and i.producer.command == command]
    return sorted(made, key=lambda i: not i.producer.with_store)
