"""Torch datasets over the Kaggle folders: reduced JPEG decode, uint8 tensors out.

Labels come from the CSV text; segmentation masks are decoded from RLE and resized to the
training size. Samples are ``dict(image=uint8 (H, W, 3), target=..., index=int)``; a batch's
``image`` is NHWC uint8, which ``permute(0, 3, 1, 2)`` turns into a channels_last NCHW view.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active
from cloudpipe.core.rle import rle2mask
from cloudpipe.data.images import read_file, read_image


class CloudDataset(Dataset):
    """JPEG files of one split, decoded at the libjpeg scale ``reduction``
    (:func:`cloudpipe.data.images.reduction_for`) and resized to ``size`` (H, W), with optional
    presence ``labels`` (n, 4) or masks (``rles``: per image, its 4 RLE strings at
    ``mask_shape``). ``transform`` (an albumentations Compose, masks following) is seeded by
    (``seed``, epoch, index), so it is the same whatever the worker count, and a resumed run
    replays it exactly."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int],
        reduction: int = 1,
        labels: np.ndarray | None = None,
        rles: Sequence[Sequence[str]] | None = None,
        mask_shape: tuple[int, int] | None = None,
        transform=None,
        seed: int = 0,
    ):
        self.paths = list(paths)
        self.size = tuple(size)
        self.reduction = reduction
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.rles = rles
        self.mask_shape = mask_shape
        self.rle_order = active().rle_order  # the profile's, fixed here: a worker process may not share the context
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation stream of an epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.paths[index], self.size, self.reduction)
        sample: dict = {"index": index}
        mask = None
        if self.rles is not None:
            mask = np.stack(
                [resize_nearest(rle2mask(r, self.mask_shape, self.rle_order), self.size) for r in self.rles[index]], axis=-1
            )
        if self.transform is not None:
            self.transform.set_random_seed(self.seed * 1_000_003 + self.epoch * 100_003 + index)
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask")
        sample["image"] = torch.from_numpy(np.ascontiguousarray(image))
        if mask is not None:
            sample["target"] = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))
        elif self.labels is not None:
            sample["target"] = torch.from_numpy(self.labels[index])
        return sample


class JpegFiles(Dataset):
    """The bytes of JPEG files, for decoding batches on the device
    (:func:`cloudpipe.data.images.decode_batch`); batch them with :func:`collate_files`."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        data = bytearray(read_file(self.paths[index]))  # writable, as torch.frombuffer wants
        return {"data": torch.frombuffer(data, dtype=torch.uint8), "index": index}


def collate_files(samples: list[dict]) -> dict:
    """A batch of :class:`JpegFiles` samples: ``data`` a list (files differ in length), ``index`` a tensor."""
    return {"data": [s["data"] for s in samples], "index": torch.tensor([s["index"] for s in samples])}


def worker_init(_: int) -> None:
    """DataLoader workers decode one image each; OpenCV's own threads would oversubscribe."""
    cv2.setNumThreads(0)
