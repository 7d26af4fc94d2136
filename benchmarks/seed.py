"""The seed notebooks' code, copied faithfully: the baselines cloudpipe is measured against.

These are the classic loop-based implementations used by the seed notebooks of the
"Understanding Clouds from Satellite Images" competition. They are kept *as they were* on
purpose -- do not "improve", vectorise or fix them: a benchmark against a tuned baseline says
nothing. (Only the layout, names and docstrings are ours.)

- RLE codec: :func:`rle_decode`, :func:`mask2rle` (``benchmarks/rle.py``).
- Training data: :func:`read_train_csv`, :func:`make_mask`, :func:`training_transforms`,
  :class:`CloudDataset` -- full-size ``cv2.imread``, all four masks decoded at 1400 x 2100 even
  for the classifier (whose labels the seed derived from the decoded masks), albumentations
  ``Resize`` + augmentations + ``Normalize`` + ``ToTensorV2`` on the CPU, float32 out
  (``benchmarks/training.py``).
- Model: :func:`build_classifier` (torchvision ResNet34, 4 outputs, ``layer1``/``layer2`` frozen),
  :func:`train_step` in fp32 NCHW, :func:`train_epoch` (a step per batch of the loader).
- Inference and blanking: :class:`CloudTestDataset`, :func:`test_transforms`,
  :func:`predict_probs` (fp32, NCHW, no autocast), :func:`blank_submission` (every mask decoded
  with :func:`rle_decode` at 350 x 525, multiplied by the presence decision, re-encoded with
  :func:`mask2rle`) (``benchmarks/predicting.py``).

The only departure from the notebook: albumentations 2.x spells the seed's
``GaussNoise(var_limit=(10, 50))`` as ``GaussNoise(std_range=(0.012, 0.028))`` (the same noise:
std 3.2-7.1 grey levels).
"""

from __future__ import annotations

import os

import albumentations as albu
import cv2
import numpy as np
import pandas as pd
import torch
import torchvision
from albumentations.pytorch import ToTensorV2
from torch import nn
from torch.utils.data import Dataset


def rle_decode(mask_rle, shape=(1400, 2100)):
    """Seed decode: parse the pairs, then set ``img[lo:hi] = 1`` in a Python loop over runs."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def mask2rle(img):
    """Seed encode: transpose-flatten, pad, diff, then ``" ".join`` of ``str()`` per number."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


# --- training data --------------------------------------------------------------------------


def read_train_csv(path):
    """Seed: ``train.csv`` with ``label`` and ``im_id`` columns split off ``Image_Label``."""
    train = pd.read_csv(path)
    train["label"] = train["Image_Label"].apply(lambda x: x.split("_")[1])
    train["im_id"] = train["Image_Label"].apply(lambda x: x.split("_")[0])
    return train


def make_mask(df, image_name="img.jpg", shape=(1400, 2100)):
    """Seed: the four masks of an image, float32 (H, W, 4), each decoded at full size."""
    encoded_masks = df.loc[df["im_id"] == image_name, "EncodedPixels"]
    masks = np.zeros((shape[0], shape[1], 4), dtype=np.float32)
    for idx, label in enumerate(encoded_masks.values):
        if isinstance(label, str):  # the notebook's `label is not np.nan` (pandas 3 strings)
            mask = rle_decode(label, shape)
            masks[:, :, idx] = mask
    return masks


def training_transforms(size=(512, 768), noise=True, brightness_contrast=True):
    """Seed: resize, flips, brightness/contrast, Gaussian noise, ImageNet normalisation.

    ``noise`` / ``brightness_contrast`` False drop those two (the segmentation config's
    augmentations are the flips only)."""
    return albu.Compose(
        [albu.Resize(*size), albu.HorizontalFlip(p=0.5), albu.VerticalFlip(p=0.5)]
        + ([albu.RandomBrightnessContrast(p=0.5)] if brightness_contrast else [])
        + ([albu.GaussNoise(std_range=(0.012, 0.028), p=0.5)] if noise else [])
        + [albu.Normalize(), ToTensorV2(transpose_mask=True)]
    )


class CloudDataset(Dataset):
    """Seed training dataset: full-size decode, masks decoded at 1400 x 2100, CPU transforms.

    ``task="classifier"`` returns ``(image float32 (3, H, W), label float (4,))`` with the label
    derived from the transformed masks (a class is present where its mask has a pixel set);
    ``task="segmentation"`` returns ``(image, mask float32 (4, H, W))``.
    """

    def __init__(self, df, img_ids, data_folder, transforms, task="classifier", shape=(1400, 2100)):
        self.shape = shape  # the notebook's make_mask default; a parameter only for smoke runs
        self.df = df
        self.img_ids = list(img_ids)
        self.data_folder = str(data_folder)
        self.transforms = transforms
        self.task = task

    def __getitem__(self, idx):
        image_name = self.img_ids[idx]
        mask = make_mask(self.df, image_name, self.shape)
        image_path = os.path.join(self.data_folder, image_name)
        img = cv2.imread(image_path)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        augmented = self.transforms(image=img, mask=mask)
        img = augmented["image"]
        mask = augmented["mask"]
        if self.task == "classifier":
            label = (mask.sum(dim=(1, 2)) > 0).float()
            return img, label
        return img, mask

    def __len__(self):
        return len(self.img_ids)


# --- model ----------------------------------------------------------------------------------


def build_classifier(state_dict=None):
    """Seed: torchvision ResNet34, ``fc`` -> 4 outputs, ``layer1`` and ``layer2`` frozen.

    ``state_dict``: weights for the whole network (torchvision key names), or None (random)."""
    model = torchvision.models.resnet34(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 4)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    for layer in (model.layer1, model.layer2):
        for param in layer.parameters():
            param.requires_grad = False
    return model


def train_step(model, optimizer, criterion, images, labels):
    """Seed: one fp32 step on a normalised float NCHW batch (the notebook's inner loop)."""
    optimizer.zero_grad()
    outputs = model(images)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_epoch(model, optimizer, criterion, loader):
    """Seed: the notebook's epoch, one :func:`train_step` per batch of the loader."""
    model.train()
    losses = [train_step(model, optimizer, criterion, images, labels) for images, labels in loader]
    return float(np.mean(losses))


# --- inference and blanking -----------------------------------------------------------------


def test_transforms(size=(512, 768)):
    """Seed: resize, ImageNet normalisation, to a float32 CHW tensor."""
    return albu.Compose([albu.Resize(*size), albu.Normalize(), ToTensorV2()])


class CloudTestDataset(Dataset):
    """Seed test dataset: full-size decode, RGB, CPU transforms."""

    def __init__(self, img_ids, data_folder, transforms):
        self.img_ids = list(img_ids)
        self.data_folder = str(data_folder)
        self.transforms = transforms

    def __getitem__(self, idx):
        image_path = os.path.join(self.data_folder, self.img_ids[idx])
        img = cv2.imread(image_path)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return self.transforms(image=img)["image"]

    def __len__(self):
        return len(self.img_ids)


def predict_probs(model, loader):
    """Seed: fp32 inference batch by batch; sigmoid probabilities (n, 4) in loader order."""
    model.eval()
    probs = []
    with torch.no_grad():
        for images in loader:
            probs.append(torch.sigmoid(model(images)).numpy())
    return np.concatenate(probs)


def blank_submission(sub, probs, threshold=0.5, shape=(350, 525)):
    """Seed: decode every mask, multiply it by the presence decision, re-encode it.

    Args:
        sub: the segmentation submission (``Image_Label, EncodedPixels``; empty cells NaN).
        probs: dict image name -> 4 presence probabilities (class order).

    Returns:
        A new submission frame with the blanked ``EncodedPixels``.
    """
    classes = ["Fish", "Flower", "Gravel", "Sugar"]
    encoded_pixels = []
    for _, row in sub.iterrows():
        image, label = row["Image_Label"].split("_")
        rle = row["EncodedPixels"]
        mask = rle_decode(rle, shape) if isinstance(rle, str) else np.zeros(shape, dtype=np.uint8)
        mask = mask * (probs[image][classes.index(label)] > threshold)
        encoded_pixels.append(mask2rle(mask))
    out = sub[["Image_Label"]].copy()
    out["EncodedPixels"] = encoded_pixels
    return out
