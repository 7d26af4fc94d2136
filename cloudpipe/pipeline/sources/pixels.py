"""Statistics of the segmentation probabilities (``predict-seg``'s ``<stem>_probs.npy``): the
largest pixel probability ``max``, the mean of the ``top_k`` most probable pixels ``top_mean``
(the 1st place used 18,000 pixels at 350 x 525), and the share of pixels at or above
``area_threshold`` ``area`` (:class:`~cloudpipe.algorithms.presence.PixelStats`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.beside import info_path, store_paths
from cloudpipe.data.kaggle import require_images
from cloudpipe.data.probstore import array_writer, info_writer, read_store
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.sources import Predicted, Producer, Source, SourceInput, Writer, register


class StoreRows:
    """A store's rows of the images asked for; each setting's statistics computed once for all
    three sources."""

    def __init__(self, store: np.ndarray, rows: np.ndarray):
        self.store, self.rows = store, rows
        self.stats = cache(lambda pixel: {k: v[rows] for k, v in pixel.scores(store).items()})


def _read(path: Path, images: list[str], split: str) -> StoreRows:
    store, info = read_store(path)
    if info.split != split:
        raise CloudpipeError(f"holds {info.split} probabilities; {split} images need a {split} store", path=path)
    row = {name: i for i, name in enumerate(info.images)}
    require_images(images, row, path=path)
    return StoreRows(store, np.array([row[i] for i in images], dtype=np.int64))


def _write(made: Predicted) -> tuple[Writer, ...]:
    return array_writer(made.store), info_writer(made.info)


SEG_STORE = SourceInput("seg_store", "--seg-store", "the segmentation probabilities (predict-seg's <stem>_probs.npy)", _read,
                        Producer(lambda csv: store_paths(csv)[0], _write, with_store=True),
                        companions=lambda store: (info_path(store),),
                        runs=lambda store: Ensemble.merged([(read_store(store)[1], 1.0)]))

for _name, _help in [("max", "the largest pixel probability"), ("top_mean", "the mean of the top_k most probable pixels"),
                     ("area", "the share of pixels at or above area_threshold")]:
    register(Source(_name, _help, SEG_STORE, lambda data, pixel, name=_name: data.stats(pixel)[name], pixel=True))
