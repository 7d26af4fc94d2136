"""The tiny stand-in networks: the real models' interface at a fraction of their cost."""

from __future__ import annotations

import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.models.networks import build_classifier, build_segmenter
from cloudpipe.models.tiny import TinyClassifier, TinySegmenter


def test_shapes_and_names_like_the_real_models():
    x = torch.randn(2, 3, 32, 48)
    assert TinyClassifier(num_classes=4)(x).shape == (2, 4)
    assert TinySegmenter(classes=4)(x).shape == (2, 4, 32, 48)
    assert {"layer1", "layer2", "fc"} <= dict(TinyClassifier().named_children()).keys()
    assert {"encoder", "decoder", "segmentation_head"} <= dict(TinySegmenter(4).named_children()).keys()


def test_built_by_name_and_small():
    classifier = build_classifier("tiny", "none", freeze=["layer1"])
    assert not any(p.requires_grad for p in classifier.body.layer1.parameters())
    segmenter = build_segmenter("tiny", "resnet34", "none")
    assert sum(p.numel() for p in classifier.parameters()) < 10_000
    assert sum(p.numel() for p in segmenter.parameters()) < 10_000
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert segmenter(images).shape == (1, 4, 32, 32)


def test_no_pretrained_weights():
    with pytest.raises(CloudpipeError, match="no ImageNet weights"):
        build_classifier("tiny", "imagenet")
    with pytest.raises(CloudpipeError, match="stand-in without pretrained weights"):
        build_segmenter("tiny", "resnet34", "imagenet")
