"""Tiny stand-in networks with the same interface as the real ones: registered by name like
them, so tests and smoke runs exercise every code path in milliseconds and kilobytes.

``TinyClassifier`` names its parts like a torchvision ResNet (``layer1``, ``layer2``, ``fc``), so
the classifier's ``freeze`` and head replacement work on it; ``TinySegmenter`` like an smp model
(``encoder``, ``decoder``, ``segmentation_head``).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyClassifier(nn.Module):
    """Two strided conv blocks, global average pooling, a linear head: (N, 3, H, W) -> (N, k)."""

    def __init__(self, num_classes: int = 1000, width: int = 16):
        super().__init__()
        self.layer1 = _block(3, width, 2)
        self.layer2 = _block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(x))).flatten(1))


class TinySegmenter(nn.Module):
    """A stride-4 encoder, a bilinear decoder back to the input size, a 1x1 head:
    (N, 3, H, W) -> (N, classes, H, W). With ``head_dropout`` (like smp's ``aux_params``) a
    classification head on the encoder too: -> (masks, labels (N, classes))."""

    def __init__(self, classes: int, width: int = 8, head_dropout: float | None = None):
        super().__init__()
        self.encoder = nn.Sequential(_block(3, width, 2), _block(width, width, 2))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False), _block(width, width, 1))
        self.segmentation_head = nn.Conv2d(width, classes, 1)
        self.classification_head = None if head_dropout is None else nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        masks = self.segmentation_head(self.decoder(features))
        return masks if self.classification_head is None else (masks, self.classification_head(features))
