"""One image through a segmentation run, in memory: for a notebook, no files written.

:func:`segment_image` gives the run's probabilities and post-processed masks (one per class of
the run's profile, at its submission size) of a JPEG exactly as ``predict-seg`` computes them (the same decode, fold models averaged,
probabilities quantised to uint8 as stored, the tuned post-processing), or of an RGB array
through the same steps (:func:`as_model_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloudpipe.algorithms.postprocess import PostProcess
from cloudpipe.core.profile import active, use_profile
from cloudpipe.data.images import check_images, check_rgb, read_image, reduction_for, resize_decoded
from cloudpipe.data.profiles import run_profile
from cloudpipe.data.runfolder import POSTPROCESS_JSON
from cloudpipe.engine.settings import InferenceSettings


@dataclass
class ImageSegmentation:
    """What a segmentation run makes of one image: float32 (classes, H, W) pixel probabilities at the
    submission size (in steps of 1/255, as stored), uint8 0/1 masks post-processed by ``postprocess``
    (``tuned``: a file's, not the steps' defaults), the head's presence (classes,) or None without a
    head, and the ``classes`` of the run's profile, in the order of the first axis."""

    probs: np.ndarray
    masks: np.ndarray
    presence: np.ndarray | None
    postprocess: PostProcess
    tuned: bool
    classes: tuple[str, ...]


def as_model_input(image: Path | str | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) at the model's ``size``: a JPEG decoded as the commands decode it, or
    an RGB array brought to ``size`` by the same steps (the decoder's reduction, then bilinear).

    Raises:
        CloudpipeError: a missing or corrupt file. BadValue, BadType: an array that
            :func:`~cloudpipe.data.images.check_rgb` refuses (not uint8 RGB, empty or too large).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        source = check_images([path])
        return read_image(path, size, reduction_for(source, size))
    return np.ascontiguousarray(resize_decoded(check_rgb(image), size))  # image[..., ::-1] (BGR to RGB) is a view


def segment_image(run_dir: Path, image: Path | str | np.ndarray, *, postprocess: Path | PostProcess | None = None,
                  settings: InferenceSettings = InferenceSettings(device="cpu", progress=False)) -> ImageSegmentation:
    """Segment one image with a run (its fold models averaged), in memory, under the run's own
    profile (:func:`~cloudpipe.data.profiles.run_profile`: its classes and submission size).

    Args:
        image: a JPEG path, or an RGB uint8 array (H, W, 3) of up to
            :data:`~cloudpipe.core.constants.MAX_PIXELS` pixels (:func:`as_model_input`): a
            JPEG and its full-size decode give the same model input exactly under twice the
            model's size, else within a grey level or so (libjpeg's DCT scaling is not exactly a
            block mean): the same masks but for a few pixels at their edges.
        postprocess: a post-processing file or object; default the run's ``seg_postprocess.json``
            when ``predict-seg --split val`` has tuned it, else the steps' untuned defaults.
        settings: device, TTA and precision (``batch_size``, ``workers`` and ``decode`` do not apply).

    Raises:
        CloudpipeError: a bad run, image or post-processing file. BadType, BadValue: an array
            that :func:`as_model_input` refuses.
    """
    run_dir = Path(run_dir)
    if not isinstance(image, (str, Path)):
        image = check_rgb(image)  # refused before any model loads
    with use_profile(run_profile(run_dir)):
        return _segment(run_dir, image, postprocess, settings)


def _segment(run_dir: Path, image: Path | str | np.ndarray, postprocess: Path | PostProcess | None,
             settings: InferenceSettings) -> ImageSegmentation:
    """:func:`segment_image` under the run's profile."""
    import torch

    from cloudpipe.engine.devices import autocast, resolve_device
    from cloudpipe.engine.infer import TTA_VIEWS, batch_probs, load_run
    from cloudpipe.pipeline.seg_masks import load_postprocess

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
        small = torch.nn.functional.interpolate(probs, size=active().submission_size, mode="bilinear", align_corners=False)
    stored = (small[0] * 255).round().to(torch.uint8).cpu().numpy()  # what predict-seg's store holds
    masks = np.stack([post.apply(stored[k], k) for k in range(len(active().classes))]).astype(np.uint8)
    presence = None if head is None else head[0].float().cpu().numpy()
    return ImageSegmentation(stored.astype(np.float32) / 255, masks, presence, post, tuned, active().classes)
