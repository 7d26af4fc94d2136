"""The files a command writes beside its ``--out``, named here alone (``<stem>_*``).

``predict`` writes ``sub.csv`` and ``sub_probs.csv``; ``predict-seg`` writes ``seg.csv`` with its
probability store ``seg_probs.npy`` + ``seg_probs.json``, the head's ``seg_presence.csv`` and, for an
ensemble, ``seg_postprocess.json``.
"""

from __future__ import annotations

from pathlib import Path


def _beside(out: Path, suffix: str) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}{suffix}")


def probs_path_for(out: Path) -> Path:
    """The presence scores a submission was gated on: ``<stem>_probs.csv``."""
    return _beside(out, "_probs.csv")


def store_paths(csv: Path) -> tuple[Path, Path]:
    """The probability store beside a predictions CSV: ``<stem>_probs.npy`` and ``<stem>_probs.json``."""
    return _beside(csv, "_probs.npy"), _beside(csv, "_probs.json")


def info_path(store: Path) -> Path:
    """The image list of a store: ``X_probs.npy`` -> ``X_probs.json``."""
    return Path(store).with_suffix(".json")


def presence_path(csv: Path) -> Path:
    """The segmentation head's presence beside a predictions CSV: ``<stem>_presence.csv``
    (``image`` and one column per class of the profile; written when the model has a classification head)."""
    return _beside(csv, "_presence.csv")


def postprocess_path_for(out: Path) -> Path:
    """An ensemble's post-processing beside its CSV: ``<stem>_postprocess.json``."""
    return _beside(out, "_postprocess.json")
