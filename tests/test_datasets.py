"""CloudDataset: uint8 HWC images out, labels from the CSV text, masks from RLE, seeded augmentation."""

from __future__ import annotations

import numpy as np
import torch

from cloudpipe.data.datasets import CloudDataset
from cloudpipe.data.kaggle import load_train_data
from cloudpipe.data.transforms import train_transform


def test_samples(tiny_data):
    data = load_train_data(tiny_data)
    images = list(data.labels.index[:3])
    labels = data.labels.loc[images].to_numpy()
    cls = CloudDataset(data.paths(images), (32, 48), 1, labels=labels)
    sample = cls[1]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (32, 48, 3)
    assert sample["index"] == 1 and sample["target"].tolist() == labels[1].astype(np.float32).tolist()
    seg = CloudDataset(data.paths(images), (32, 48), 1, labels=labels, rles=data.rles.loc[images].to_numpy().tolist(),
                       mask_shape=data.image_shape)
    mask = seg[0]["target"]
    assert mask.shape == (4, 32, 48) and mask.dtype == torch.uint8
    assert (mask.flatten(1).amax(1).numpy() > 0).tolist() == (labels[0] > 0).tolist()  # presence agrees with the CSV


def test_augmentation_is_seeded_by_epoch_and_index(tiny_data):
    data = load_train_data(tiny_data)
    paths = data.paths(list(data.labels.index[:2]))
    augment = dict(hflip=0.5, vflip=0.5, brightness_contrast=0.5, noise=0.5, seed=1)
    a = CloudDataset(paths, (32, 48), 1, transform=train_transform(**augment), seed=1)
    b = CloudDataset(paths, (32, 48), 1, transform=train_transform(**augment), seed=1)
    assert torch.equal(a[0]["image"], b[0]["image"])
    epochs = []
    for epoch in range(4):
        a.set_epoch(epoch)
        epochs.append(a[0]["image"])
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])
