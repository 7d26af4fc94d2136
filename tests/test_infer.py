"""Streaming inference: fold models averaged, flip TTA, the checks before the first image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.config import load_config
from cloudpipe.engine.infer import load_run, predict_presence
from cloudpipe.engine.settings import InferenceSettings
from tests.conftest import train_tiny

CPU = InferenceSettings(device="cpu", workers=0, progress=False)


def test_fold_models_are_averaged(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_tiny(tiny_data, run, folds=2, lr=None)  # lr None: scratch_lr, as before
    paths = sorted((tiny_data / "test_images").iterdir())
    both = predict_presence(run, paths, CPU)
    each = [predict_presence(run / f"fold{i}", paths, CPU) for i in range(2)]
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, atol=1e-6)


@pytest.mark.parametrize("views, flips", [(3, (None, (3,), (2,))), (4, (None, (3,), (2,), (2, 3)))])
def test_tta_is_the_mean_over_flips(tiny_data, tiny_classifier_run, views, flips):
    import torch

    from cloudpipe.data.images import read_image
    from cloudpipe.engine.infer import load_run, stream_probs

    paths = sorted((tiny_data / "test_images").iterdir())
    run = load_run(tiny_classifier_run, "classifier", torch.device("cpu"))
    [(indices, tta, _)] = list(stream_probs(run, paths, torch.device("cpu"),
                                         InferenceSettings(workers=0, tta=True, tta_views=views, amp=False, progress=False)))
    images = torch.stack([torch.from_numpy(read_image(p, (64, 96), 1)) for p in paths]).permute(0, 3, 1, 2)
    with torch.no_grad():
        manual = sum(torch.sigmoid(run.models[0](images.flip(d) if d else images)) for d in flips) / views
    assert list(indices) == list(range(len(paths)))
    torch.testing.assert_close(tta, manual, atol=1e-5, rtol=1e-5)


def test_tta_changes_nothing_for_a_flip_invariant_model(tiny_data):
    import torch

    from cloudpipe.engine.infer import RunModels, stream_probs

    class MeanColour(torch.nn.Module):  # depends only on each channel's mean: flip-invariant
        def forward(self, x):
            return x.float().mean((2, 3)) @ torch.ones(3, 4) / 300 - 0.5

    run = RunModels([MeanColour()], load_config("classifier", overrides=dict(image_size=(64, 96))), [])
    paths = sorted((tiny_data / "test_images").iterdir())
    cpu = torch.device("cpu")
    plain = torch.cat([p for _, p, _ in stream_probs(run, paths, cpu, InferenceSettings(workers=0, amp=False, progress=False))])
    flipped = torch.cat([p for _, p, _ in stream_probs(run, paths, cpu, InferenceSettings(workers=0, tta=True, amp=False,
                                                                                          progress=False))])
    torch.testing.assert_close(plain, flipped)


def test_load_run_refuses_the_other_stage_and_foreign_weights(tiny_classifier_run, tmp_path):
    import shutil

    with pytest.raises(CloudpipeError, match="needs a segmentation"):
        load_run(tiny_classifier_run, "segmentation", torch.device("cpu"))
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_run, run)
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"]["arch"] = "resnet18"  # weights of the tiny net claimed as a ResNet18
    torch.save(state, run / "best.pt")
    with pytest.raises(CloudpipeError, match="weights do not fit resnet18"):
        load_run(run, "classifier", torch.device("cpu"))


@pytest.mark.parametrize("run_name", ["tiny_classifier_run", "tiny_classifier_run_b"])
def test_device_decode_gives_the_probabilities_of_worker_decode(tiny_data, run_name, request):
    """``decode="device"`` (nvJPEG on a GPU; libjpeg through torchvision here) predicts what the
    workers' reduced decode predicts, at the run's own size and at a resized one."""
    run = request.getfixturevalue(run_name)
    paths = sorted((tiny_data / "test_images").iterdir())
    workers = predict_presence(run, paths, InferenceSettings(device="cpu", workers=0, amp=False, progress=False))
    device = predict_presence(run, paths, InferenceSettings(device="cpu", workers=1, decode="device", amp=False,
                                                            batch_size=4, progress=False))
    np.testing.assert_allclose(device, workers, atol=0.02)
    assert np.abs(device - workers).mean() < 0.005


def test_compiled_model_gives_the_same_probabilities(tiny_data, tiny_classifier_run):
    """``compile=True`` (torch.compile, frozen weights) changes nothing but the speed; a short
    last batch (6 images, batch 4) is padded and its padding dropped."""
    paths = sorted((tiny_data / "test_images").iterdir())
    settings = InferenceSettings(device="cpu", workers=0, batch_size=4, progress=False)
    eager = predict_presence(tiny_classifier_run, paths, settings)
    compiled = predict_presence(tiny_classifier_run, paths, dataclasses.replace(settings, compile=True))
    assert compiled.shape == eager.shape == (6, 4)
    np.testing.assert_allclose(compiled, eager, atol=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (python -m benchmarks gpu checks the same at full size)")
@pytest.mark.parametrize("decode", ["workers", "device"])
def test_the_gpu_path_gives_the_cpu_probabilities(tiny_data, tiny_classifier_run_b, decode):
    paths = sorted((tiny_data / "test_images").iterdir())
    cpu = predict_presence(tiny_classifier_run_b, paths, InferenceSettings(device="cpu", workers=0, progress=False))
    gpu = predict_presence(tiny_classifier_run_b, paths, InferenceSettings(device="cuda", workers=1, decode=decode,
                                                                           progress=False))
    np.testing.assert_allclose(gpu, cpu, atol=0.02)


def test_four_view_tta_flips_masks_back(tiny_data):
    """A segmentation model that draws its input's red channel: every view, flipped back, is the
    identity's mask, so the 4-view mean equals the plain prediction."""
    import torch

    from cloudpipe.engine.infer import RunModels, stream_probs

    class Red(torch.nn.Module):
        def forward(self, x):
            return (x[:, :1].float() / 25.5 - 5).expand(-1, 4, -1, -1)

    run = RunModels([Red()], load_config("segmentation", overrides=dict(image_size=(64, 96))), [])
    paths = sorted((tiny_data / "test_images").iterdir())
    cpu = torch.device("cpu")

    def probs(**tta):
        settings = InferenceSettings(workers=0, amp=False, progress=False, **tta)
        return torch.cat([p for _, p, _ in stream_probs(run, paths, cpu, settings)])

    torch.testing.assert_close(probs(tta=True, tta_views=4), probs())


@pytest.mark.parametrize("change, message", [
    ({"model": "w"}, "checkpoint's model is not tensors by name"),
    ({"config": {"task": "classifier", "epochs": "many"}}, "checkpoint's config: config: epochs: must be a whole number >= 1, got 'many'"),
    ({"classes": None}, "checkpoint's classes is not a list of class names"),
])
def test_load_run_says_in_one_line_what_a_tampered_checkpoint_holds(tiny_classifier_run, tmp_path, change, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_run, run)
    state = torch.load(run / "best.pt", weights_only=True)
    torch.save({**state, **change}, run / "best.pt")
    with pytest.raises(CloudpipeError, match=message) as info:
        load_run(run, "classifier", torch.device("cpu"))
    assert str(run / "best.pt") in str(info.value)


def test_multiscale_tta_resizes_the_input_and_the_masks_back(tiny_data):
    """Each scale is a view at a size rounded to multiples of 32; masks come back at the
    model's size, so a model that draws a constant field averages to that field; a model
    drawing its input's mean sees the same mean at every scale."""
    from cloudpipe.engine.infer import RunModels, scaled, stream_probs

    seen = []

    class Constant(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(len(x), 4, *x.shape[-2:])  # probability 0.5 everywhere

    run = RunModels([Constant()], load_config("segmentation", overrides=dict(image_size=(64, 96))), [])
    paths = sorted((tiny_data / "test_images").iterdir())
    settings = InferenceSettings(workers=0, amp=False, progress=False, tta=True, tta_views=3, tta_scales=(0.5, 1.0, 2.0))
    [(_, probs, _)] = list(stream_probs(run, paths, torch.device("cpu"), settings))
    assert probs.shape == (len(paths), 4, 64, 96) and torch.allclose(probs, torch.full_like(probs, 0.5))
    assert sorted(set(seen)) == [(32, 64), (64, 96), (128, 192)] and len(seen) == 9  # 3 flips x 3 scales
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    assert scaled(images, 1.0) is images
    torch.testing.assert_close(scaled(images, 2.0).mean(), images.float().mean(), rtol=0.01, atol=0.5)


def test_tta_scales_on_the_command_line(tiny_data, tiny_classifier_run, tmp_path):
    from tests.conftest import cli

    seg = tmp_path / "x.csv"
    seg.write_text("Image_Label,EncodedPixels\n")
    bad = cli("predict", "--seg", seg, "--run", tiny_classifier_run, "--data", tiny_data, "--out", tmp_path / "s.csv",
              "--tta-scales", "0.75,x")
    assert bad.exit_code == 2 and "'0.75,x' is not a comma-separated list of numbers" in bad.output
    bad = cli("predict", "--seg", seg, "--run", tiny_classifier_run, "--data", tiny_data, "--out", tmp_path / "s.csv",
              "--tta-scales", "1,1")
    assert bad.exit_code == 2 and "distinct factors in [0.25, 4]" in bad.output


def test_a_run_loaded_under_another_profiles_classes_is_refused_in_one_line(tiny_classifier_run):
    """The checkpoint records its classes; under a profile of other classes the run is not loaded."""
    import torch

    from cloudpipe.core.errors import CloudpipeError
    from cloudpipe.core.profile import packaged, use_profile
    from cloudpipe.engine.infer import load_run

    with use_profile(packaged("steel")), pytest.raises(
            CloudpipeError, match=r"checkpoint's classes Fish, Flower, Gravel, Sugar are not those of the profile steel \(1, 2"):
        load_run(tiny_classifier_run, "classifier", torch.device("cpu"))
