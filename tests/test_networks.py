"""Models by name, input normalisation on the device, offline weights."""

from __future__ import annotations

import pytest
import torch

from cloudpipe.core.competition import IMAGENET_MEAN, IMAGENET_STD
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.models.networks import build_classifier, build_segmenter


def test_classifier_has_four_outputs_and_frozen_layers():
    model = build_classifier("resnet18", "none", ["layer1"])
    x = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    assert model(x).shape == (2, 4)
    assert not any(p.requires_grad for p in model.body.layer1.parameters())
    assert all(p.requires_grad for p in model.body.layer2.parameters())


def test_normalisation_matches_imagenet_stats():
    model = build_classifier("resnet18", "none")
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x.float() * model.scale + model.shift, expected)


def test_unknown_names_list_the_choices():
    with pytest.raises(CloudpipeError, match="resnet34"):
        build_classifier("vgg11")
    with pytest.raises(CloudpipeError, match="Unet"):
        build_segmenter("NotANet", "resnet18")
    with pytest.raises(CloudpipeError, match="not a submodule"):
        build_classifier("resnet18", "none", ["layer9"])


def test_local_weights_path(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_classifier("resnet18", str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.body.conv1.weight, reference.conv1.weight)
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CloudpipeError, match="not a state dict of a torchvision resnet18"):
        build_classifier("resnet18", str(tmp_path / "bad.pth"))


def test_segmenter_encoder_weights_path(tmp_path):
    source = build_segmenter("Unet", "resnet18", "none")
    torch.save(source.body.encoder.state_dict(), tmp_path / "enc.pth")
    model = build_segmenter("FPN", "resnet18", str(tmp_path / "enc.pth"))
    torch.testing.assert_close(model.body.encoder.conv1.weight, source.body.encoder.conv1.weight)
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    assert model(x).shape == (1, 4, 64, 96)


def test_imagenet_weights_offline_give_one_clear_error(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CloudpipeError, match=r"place resnet34-.*\.pth at .*checkpoints.*--weights none"):
        build_classifier("resnet34", "imagenet")
