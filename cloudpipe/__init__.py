"""cloudpipe: a two-stage (segment, then gate by presence) pipeline for Understanding Clouds.

The names below are the library's stable face for a notebook; each is imported on first use,
so ``import cloudpipe`` (and ``cloudpipe --help``) stays instant. See README.md, "Library".
"""

from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # set before any module imports albumentations: its
# import otherwise asks PyPI for a newer version, on every command, and warns in 2 lines offline

_API: dict[str, str] = {
    # the dataset's facts (a profile) and the codec
    "active": "cloudpipe.core.profile", "use_profile": "cloudpipe.core.profile", "set_profile": "cloudpipe.core.profile",
    "load_profile": "cloudpipe.data.profiles",
    "mask2rle": "cloudpipe.core.rle", "rle2mask": "cloudpipe.core.rle",
    "CloudpipeError": "cloudpipe.core.errors",
    # submissions and data
    "read_mask_csv": "cloudpipe.data.kaggle", "write_submission": "cloudpipe.data.kaggle",
    "make_dataset": "cloudpipe.data.synth",
    # the metric
    "dice": "cloudpipe.core.metric", "dice_score": "cloudpipe.core.metric", "evaluate_files": "cloudpipe.pipeline.evaluate",
    # gating and post-processing
    "gate": "cloudpipe.algorithms.gating", "keep": "cloudpipe.algorithms.gating", "GateSpec": "cloudpipe.algorithms.gating",
    "PostProcess": "cloudpipe.algorithms.postprocess", "make_steps": "cloudpipe.algorithms.postprocess",
    # training, and runs on images
    "load_config": "cloudpipe.engine.config", "train_run": "cloudpipe.engine.train",
    "InferenceSettings": "cloudpipe.engine.settings", "predict_presence": "cloudpipe.engine.infer",
    "segment_image": "cloudpipe.pipeline.notebook", "ImageSegmentation": "cloudpipe.pipeline.notebook",
    # the commands' functions
    "tune_thresholds": "cloudpipe.pipeline.tune", "predict_submission": "cloudpipe.pipeline.predict",
    "predict_segmentation": "cloudpipe.pipeline.segment",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'cloudpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
