"""Gating: blank the masks of (image, class) pairs whose presence probability is below the
class threshold. Blanking needs no mask decoding; every other mask is left as it came."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError


def gate(seg: pd.DataFrame, probs: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Blank the masks of pairs whose probability is below their class threshold.

    Args:
        seg: long frame (``Image_Label, EncodedPixels, image, class_name``).
        probs: presence probabilities indexed by image, one column per class.
        thresholds: class -> threshold in [0, 1].

    Returns:
        ``seg`` with ``EncodedPixels`` emptied below the threshold (others untouched), plus
        boolean columns ``absent`` (probability below threshold) and ``blanked`` (a non-empty
        mask was removed).
    """
    p = probs.reindex(seg["image"])
    if p.isna().any().any():
        raise CloudpipeError("no probabilities for some segmentation images")
    k = seg["class_name"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    pair_prob = p.to_numpy()[np.arange(len(seg)), k]
    cut = np.array([thresholds[c] for c in CLASSES])[k]
    out = seg.copy()
    out["absent"] = pair_prob < cut
    out["blanked"] = out["absent"] & (out["EncodedPixels"] != "")
    out.loc[out["absent"], "EncodedPixels"] = ""
    return out
