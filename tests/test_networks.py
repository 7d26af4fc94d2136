"""Models by name, input normalisation on the device, offline weights."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from cloudpipe.core.constants import IMAGENET_MEAN, IMAGENET_STD
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.models.networks import build_classifier, build_segmenter


@pytest.fixture(autouse=True)
def network(monkeypatch, tmp_path) -> list:
    """No test here reaches a network: a name lookup or a connection raises, and is recorded
    (the list returned); a retry's sleep raises too. The Hugging Face cache is an empty folder."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network (a test)")

    def no_retry(seconds):
        raise AssertionError(f"slept {seconds}s to retry")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(time, "sleep", no_retry)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return attempts


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
    with pytest.raises(CloudpipeError, match="unknown classifier arch 'resnet35'; did you mean .*resnet34"):
        build_classifier("resnet35")
    with pytest.raises(CloudpipeError, match="unknown timm model 'efficientnet_b99'; did you mean efficientnet_b"):
        build_classifier("timm:efficientnet_b99")
    with pytest.raises(CloudpipeError, match=r"unknown timm encoder \(tu-<name>\) 'resnxt50'; did you mean .*resnet50"):
        build_segmenter("Unet", "tu-resnxt50")
    with pytest.raises(CloudpipeError, match="unknown encoder 'resnet35'; did you mean .*resnet34"):
        build_segmenter("Unet", "resnet35")
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
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CloudpipeError, match=r"place resnet34-.*\.pth at .*checkpoints.*--weights none"):
        build_classifier("resnet34", "imagenet")


def test_a_cached_file_that_is_not_the_real_weights_is_refused(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cache = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cache)  # random weights, the right name
    with pytest.raises(CloudpipeError, match=r"resnet18-f37072fd.pth: not torchvision's resnet18 ImageNet weights"):
        build_classifier("resnet18", "imagenet")


def in_hub_cache(cache: Path, repo_id: str, state: dict, revision: str | None = None) -> Path:
    """``state`` as ``model.safetensors`` where the Hugging Face cache keeps ``repo_id``'s file
    (``snapshots/<commit>/``, and ``refs/main`` naming that commit when no revision is pinned)."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = revision or "0" * 40
    if revision is None:
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
    file = folder / "snapshots" / commit / "model.safetensors"
    file.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    return file


def test_segmenter_imagenet_weights_come_from_local_caches_first(tmp_path, monkeypatch, network):
    import segmentation_models_pytorch as smp
    import torchvision

    import cloudpipe.models.networks as networks

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    reference = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=4).encoder.state_dict()
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    in_hub_cache(tmp_path / "hf_cache", settings["repo_id"], reference, settings["revision"])
    net = build_segmenter("Unet", "resnet18", "imagenet")
    torch.testing.assert_close(net.body.encoder.state_dict()["conv1.weight"], reference["conv1.weight"])
    assert network == []  # the Hugging Face cache, no request

    # torchvision's file in the torch cache wins for ResNet encoders (its fc is dropped).
    tv = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "torch" / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"placeholder")
    monkeypatch.setattr(networks, "torchvision_imagenet_state", lambda arch: tv)
    net = build_segmenter("Unet", "resnet18", "imagenet")
    torch.testing.assert_close(net.body.encoder.state_dict()["conv1.weight"], tv["conv1.weight"])

    cache.unlink()
    shutil.rmtree(tmp_path / "hf_cache")
    with pytest.raises(CloudpipeError, match=r"encoder resnet18 \(huggingface.co does not answer: .*\): place "
                                             r"smp-hub/resnet18.imagenet's model.safetensors at .*resnet18-f37072fd.pth"):
        build_segmenter("Unet", "resnet18", "imagenet")


def test_a_failed_offline_attempt_leaves_no_empty_cache_folder(monkeypatch):
    def offline(*args, **kwargs):  # as torch does: make the cache folder, then fail to download
        os.makedirs(Path(torch.hub.get_dir()) / "checkpoints", exist_ok=True)
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CloudpipeError, match="--weights none"):
        build_classifier("resnet18", "imagenet")
    assert not Path(torch.hub.get_dir()).exists()


SMALL_TIMM = "mobilenetv3_small_050"
"""A timm model small enough for tests (0.6M parameters)."""


@pytest.mark.parametrize("arch, head", [("mobilenet_v3_small", "classifier.3"), (f"timm:{SMALL_TIMM}", "classifier"),
                                        ("resnet18", "fc")])
def test_any_torchvision_or_timm_classifier_gets_a_four_class_head(arch, head):
    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.recipe import param_groups
    from cloudpipe.engine.stages import stage_for

    stage = stage_for(load_config("classifier", overrides={"arch": arch, "weights": "none", "freeze": [], "encoder_lr_ratio": 0.1}))
    model = stage.build_model()
    assert model.head == head and model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)).shape == (2, 4)
    rest, backbone = param_groups(model, stage, stage.config)
    head_params = {id(p) for p in model.body.get_submodule(head).parameters()}
    assert {id(p) for p in rest["params"]} == head_params and not head_params & {id(p) for p in backbone["params"]}


def test_timm_encoders_by_smps_name():
    model = build_segmenter("Unet", f"tu-{SMALL_TIMM}", "none")
    assert model(torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)).shape == (1, 4, 64, 96)


def test_timm_imagenet_weights_come_from_the_hugging_face_cache(tmp_path, network):
    import timm

    torch.manual_seed(3)
    reference = timm.create_model(SMALL_TIMM, pretrained=False).state_dict()
    file = in_hub_cache(tmp_path / "hf_cache", timm.models.get_pretrained_cfg(SMALL_TIMM).hf_hub_id, reference)
    classifier = build_classifier(f"timm:{SMALL_TIMM}", "imagenet")
    torch.testing.assert_close(classifier.body.conv_stem.weight, reference["conv_stem.weight"])
    encoder = build_segmenter("Unet", f"tu-{SMALL_TIMM}", "imagenet").body.encoder
    torch.testing.assert_close(encoder.model.conv_stem.weight, reference["conv_stem.weight"])
    assert network == []  # no request
    file.write_bytes(b"not safetensors")
    with pytest.raises(CloudpipeError, match=rf"model.safetensors: cannot read timm {SMALL_TIMM}'s ImageNet weights "
                                             r"\(.*\): replace the file with .*, or pass --weights PATH or --weights none"):
        build_classifier(f"timm:{SMALL_TIMM}", "imagenet")


@pytest.mark.parametrize("build, what, option", [
    (lambda: build_classifier(f"timm:{SMALL_TIMM}", "imagenet"), f"timm {SMALL_TIMM}", "--weights"),
    (lambda: build_segmenter("Unet", f"tu-{SMALL_TIMM}", "imagenet"), f"timm {SMALL_TIMM}", "--encoder-weights"),
    (lambda: build_segmenter("Unet", "resnet18", "imagenet"), "encoder resnet18", "--encoder-weights"),
])
def test_hugging_face_weights_asked_for_offline_fail_in_one_line_at_once(build, what, option, network, tmp_path, capfd):
    """Offline, hf_hub_download retried each file for ~30 s ("Retrying in 8s", 10-22 lines) before
    the error; now one request tells the hub does not answer, and nothing is retried or printed."""
    with pytest.raises(CloudpipeError) as refusal:
        build()
    assert capfd.readouterr().err == ""
    message = str(refusal.value)
    assert "\n" not in message and message.startswith(f"cannot load ImageNet weights for {what} (huggingface.co "
                                                       "does not answer: ")
    assert str(tmp_path / "hf_cache" / "models--") in message and "`hf download " in message
    assert message.endswith(f"or pass {option} PATH (a local state dict) or {option} none")
    assert len(network) == 1  # the one probe, not a retried download
    assert not (tmp_path / "hf_cache").exists() or not any((tmp_path / "hf_cache").rglob("*.lock"))


def test_torchvision_weights_asked_for_offline_fail_in_one_line_with_nothing_before_it(network, capfd):
    """torch.hub printed 'Downloading: "https://download.pytorch.org/..."' before the error line."""
    with pytest.raises(CloudpipeError, match=r"^cannot load ImageNet weights for resnet18 \(download.pytorch.org does not "
                                             r"answer: URLError\): place resnet18-f37072fd.pth at .*checkpoints/"
                                             r"resnet18-f37072fd.pth, or pass --weights PATH \(a local state dict\) "
                                             r"or --weights none$"):
        build_classifier("resnet18", "imagenet")
    assert capfd.readouterr().err == "" and len(network) == 1


def test_with_hf_hub_offline_set_the_hub_is_not_asked_at_all(network, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CloudpipeError, match=r"\(HF_HUB_OFFLINE is set\): place smp-hub/resnet18.imagenet's model.safetensors "
                                             r"at .*hf_cache/models--smp-hub--resnet18.imagenet/snapshots/[0-9a-f]{40}/"
                                             r"model.safetensors \(`hf download smp-hub/resnet18.imagenet model.safetensors "
                                             r"--revision [0-9a-f]{40}` fetches it"):
        build_segmenter("Unet", "resnet18", "imagenet")
    assert network == []


def test_albumentations_does_not_ask_pypi_for_updates():
    """Its import checked PyPI on every training command and warned in 2 lines offline."""
    import subprocess
    import sys

    code = ("import socket, warnings\n"
            "def refuse(*a, **k): raise AssertionError('network')\n"
            "socket.getaddrinfo = socket.create_connection = refuse\n"
            "warnings.simplefilter('error')\n"
            "import cloudpipe.data.transforms\n"
            "print('quiet')")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout == "quiet\n" and out.stderr == "", out.stderr


def test_torchvision_classifiers_beyond_resnets_use_the_torch_cache_rule(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CloudpipeError, match=r"place mobilenet_v3_small-.*\.pth at .*checkpoints.*--weights none"):
        build_classifier("mobilenet_v3_small", "imagenet")
