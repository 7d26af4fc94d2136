"""The presence sources' scores for a list of images, read from the files that hold them: the
classifier's probabilities (given), the segmentation head's presence CSV (``<stem>_presence.csv``
from predict-seg) and the pixel statistics of a probability store (``<stem>_probs.npy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.algorithms.presence import CLASSIFIER, HEAD, PIXEL_SOURCES, PixelStats
from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import read_probs_csv
from cloudpipe.data.probstore import read_store

INPUT_OPTIONS = {CLASSIFIER: "--run RUN", HEAD: "--presence HEAD.csv (predict-seg's <stem>_presence.csv)",
                 **{s: "--seg-store STORE.npy (predict-seg's <stem>_probs.npy)" for s in PIXEL_SOURCES}}
"""The option that gives each source's input."""


def require_inputs(sources: list[str], *, classifier: bool = True, presence: Path | None = None,
                   seg_store: Path | None = None) -> None:
    """Check that every source of ``sources`` has its input.

    Raises:
        CloudpipeError: naming the sources and the options that give their inputs.
    """
    given = {CLASSIFIER: classifier, HEAD: presence is not None, **{s: seg_store is not None for s in PIXEL_SOURCES}}
    missing = [s for s in sources if not given[s]]
    if missing:
        raise CloudpipeError(f"gating on {', '.join(missing)} needs " + "; ".join(sorted({INPUT_OPTIONS[s] for s in missing})))


def source_scores(images: list[str], sources: list[str], split: str, *, classifier: pd.DataFrame | None = None,
                  presence: Path | None = None, seg_store: Path | None = None,
                  pixel: PixelStats = PixelStats()) -> dict[str, np.ndarray]:
    """The (n, 4) scores of each of ``sources`` for ``images`` (rows in that order).

    Args:
        images: the images scored.
        sources: source names (see :data:`~cloudpipe.algorithms.presence.SOURCES`).
        split: ``val`` or ``test``: the split the store must hold.
        classifier: the classifier's probabilities, indexed by image.
        presence: the head's presence CSV.
        seg_store: a probability store.
        pixel: how pixel statistics are computed.

    Raises:
        CloudpipeError: a source whose input was not given, a store of another split, or an
            input lacking some of the images.
    """
    require_inputs(sources, classifier=classifier is not None, presence=presence, seg_store=seg_store)
    out = {}
    if CLASSIFIER in sources:
        out[CLASSIFIER] = _rows(classifier, images, "the classifier's probabilities")
    if HEAD in sources:
        out[HEAD] = _rows(read_probs_csv(presence), images, str(presence))
    if any(s in PIXEL_SOURCES for s in sources):
        store, info = read_store(seg_store)
        if info.split != split:
            raise CloudpipeError(f"holds {info.split} probabilities; {split} images need a {split} store", path=seg_store)
        row = {name: i for i, name in enumerate(info.images)}
        lacking = [i for i in images if i not in row]
        if lacking:
            raise CloudpipeError(f"lacks {len(lacking)} image(s) (e.g. {', '.join(lacking[:3])})", path=seg_store)
        stats = pixel.scores(store)
        rows = np.array([row[i] for i in images], dtype=np.int64)
        out |= {s: stats[s][rows] for s in PIXEL_SOURCES if s in sources}
    return out


def _rows(frame: pd.DataFrame, images: list[str], what: str) -> np.ndarray:
    lacking = [i for i in images if i not in frame.index]
    if lacking:
        raise CloudpipeError(f"{what} lack {len(lacking)} image(s) (e.g. {', '.join(lacking[:3])})")
    return frame.loc[images, list(CLASSES)].to_numpy(np.float64)
