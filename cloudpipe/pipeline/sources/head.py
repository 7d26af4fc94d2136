"""The segmentation model's classification head (``predict-seg``'s ``<stem>_presence.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudpipe.data.beside import presence_path
from cloudpipe.data.kaggle import frame_rows, read_probs_csv
from cloudpipe.pipeline.sources import Source, SourceInput, register


def _read(path: Path, images: list[str], split: str) -> np.ndarray:
    return frame_rows(read_probs_csv(path), images, str(path))


PRESENCE = SourceInput("presence", "--presence", "the segmentation head's presence (predict-seg's <stem>_presence.csv)", _read,
                       presence_path)

register(Source("head", "the segmentation model's classification head", PRESENCE, lambda rows, pixel: rows))
