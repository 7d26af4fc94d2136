"""The segmentation model's classification head (``predict-seg``'s ``<stem>_presence.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudpipe.data.beside import presence_path
from cloudpipe.data.kaggle import frame_rows, read_probs_csv
from cloudpipe.data.outputs import csv_writer
from cloudpipe.pipeline.sources import Predicted, Producer, Source, SourceInput, Writer, register


def _read(path: Path, images: list[str], split: str) -> np.ndarray:
    return frame_rows(read_probs_csv(path), images, str(path))


def _write(made: Predicted) -> tuple[Writer, ...] | None:
    return None if made.presence is None else (csv_writer(made.presence.reset_index(), float_format="%.6f"),)


PRESENCE = SourceInput("presence", "--presence", "the segmentation head's presence (predict-seg's <stem>_presence.csv)", _read,
                       Producer(presence_path, _write))

register(Source("head", "the segmentation model's classification head", PRESENCE, lambda rows, pixel: rows))
