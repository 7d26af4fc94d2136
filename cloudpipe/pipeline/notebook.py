"""One image through a segmentation run, in memory: for a notebook, no files written.

:func:`segment_image` takes a JPEG path or an RGB array and gives the run's probabilities and
its post-processed masks at the submission size (350 x 525), exactly as ``predict-seg`` computes
them for that image (the same decode, every fold model averaged, the probabilities quantised to
the uint8 the stores keep, the run's tuned post-processing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cloudpipe.algorithms.postprocess import PostProcess
from cloudpipe.core.competition import CLASSES, SUBMISSION_SHAPE
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.images import check_images, read_image, reduction_for
from cloudpipe.data.runfolder import POSTPROCESS_JSON
from cloudpipe.engine.settings import InferenceSettings


@dataclass
class ImageSegmentation:
    """What a segmentation run makes of one image.

    Attributes:
        probs: float32 (4, 350, 525) pixel probabilities in :data:`CLASSES` order (in steps of 1/255, as stored).
        masks: uint8 0/1 (4, 350, 525), post-processed by ``postprocess``.
        presence: the classification head's probabilities (4,), or None for a model without a head.
        postprocess: the post-processing applied (the run's tuned file, or the steps' defaults).
        tuned: whether ``postprocess`` was tuned (a file), not the untuned defaults.
    """

    probs: np.ndarray
    masks: np.ndarray
    presence: np.ndarray | None
    postprocess: PostProcess
    tuned: bool


def as_model_input(image: Path | str | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) at the model's ``size``: a JPEG decoded as the commands decode it,
    or an RGB array resized as they resize a decoded image (bilinear).

    Raises:
        CloudpipeError: a missing or corrupt file, an array that is not (H, W, 3).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        source = check_images([path])
        return read_image(path, size, reduction_for(source, size))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise CloudpipeError(f"an image array must be RGB (H, W, 3); got shape {array.shape}")
    array = array.astype(np.uint8) if array.dtype != np.uint8 else array
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) if array.shape[:2] != tuple(size) else array


def segment_image(run_dir: Path, image: Path | str | np.ndarray, *, postprocess: Path | PostProcess | None = None,
                  settings: InferenceSettings = InferenceSettings(device="cpu", progress=False)) -> ImageSegmentation:
    """Segment one image with a run (its fold models averaged), in memory.

    Args:
        run_dir: a segmentation run folder.
        image: a JPEG path, or an RGB uint8 array (H, W, 3) of any size.
        postprocess: a post-processing file or object; default the run's ``seg_postprocess.json``
            when ``predict-seg --split val`` has tuned it, else the steps' untuned defaults.
        settings: device, TTA and precision (``batch_size``, ``workers`` and ``decode`` do not apply).

    Raises:
        CloudpipeError: a bad run, image or post-processing file.
    """
    import torch

    from cloudpipe.engine.devices import autocast, resolve_device
    from cloudpipe.engine.infer import TTA_VIEWS, batch_probs, load_run
    from cloudpipe.pipeline.seg_masks import load_postprocess

    run_dir = Path(run_dir)
    if isinstance(postprocess, PostProcess):
        post, tuned = postprocess, True
    else:
        path = Path(postprocess) if postprocess is not None else run_dir / POSTPROCESS_JSON
        tuned = path.is_file() or postprocess is not None
        post = load_postprocess(path) if tuned else PostProcess()
    device = resolve_device(settings.device)
    run = load_run(run_dir, "segmentation", device)
    pixels = as_model_input(image, tuple(run.config.image_size))
    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device).contiguous(memory_format=torch.channels_last)
    flips = TTA_VIEWS[settings.tta_views] if settings.tta else (None,)
    with torch.no_grad():
        probs, head = batch_probs(run.models, batch, flips, autocast(device, settings.amp and run.config.amp),
                                  settings.tta_scales)
        small = torch.nn.functional.interpolate(probs, size=SUBMISSION_SHAPE, mode="bilinear", align_corners=False)
    stored = (small[0] * 255).round().to(torch.uint8).cpu().numpy()  # what predict-seg's store holds
    masks = np.stack([post.apply(stored[k], k) for k in range(len(CLASSES))]).astype(np.uint8)
    presence = None if head is None else head[0].float().cpu().numpy()
    return ImageSegmentation(stored.astype(np.float32) / 255, masks, presence, post, tuned)
