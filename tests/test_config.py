"""Config: packaged defaults (the seed recipe), YAML and command-line overrides, validation."""

from __future__ import annotations

import re

import pytest
import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.config import config_from_dict, load_config, save_config


def test_classifier_defaults_are_the_seed_recipe():
    c = load_config("classifier")
    assert (c.arch, c.weights, c.freeze) == ("resnet34", "imagenet", ["layer1", "layer2"])
    assert (c.lr, c.patience, c.batch_size, c.accumulate, c.epochs) == (0.005, 3, 8, 4, 30)
    assert c.image_size == (512, 768) and c.val_fraction == 0.1 and c.split_seed == 69 and c.seed == 69


def test_segmentation_defaults_share_the_split():
    seg, cls = load_config("segmentation"), load_config("classifier")
    assert seg.arch == "Unet" and seg.weights == "none"
    assert (seg.val_fraction, seg.split_seed, seg.folds) == (cls.val_fraction, cls.split_seed, cls.folds)


def test_file_then_command_line_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 0.01\nimage_size: [64, 96]\n")
    c = load_config("classifier", path, {"epochs": 5, "lr": None})
    assert (c.epochs, c.lr, c.image_size) == (5, 0.01, (64, 96))


def test_save_and_reload_round_trip(tmp_path):
    c = load_config("classifier", overrides={"epochs": 2, "freeze": []})
    save_config(c, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == c


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz: 1\n", "unknown key(s) epochz"),
        ("epochs: 0\n", "epochs = 0 must be >= 1"),
        ("epochs: 1.5\n", "not a valid int"),
        ("lr: -1\n", "lr = -1.0 must be in"),
        ("hflip: 2\n", "probability"),
        ("image_size: [100, 96]\n", "multiples of 32"),
        ("device: tpu\n", "device"),
        ("workers: many\n", "workers = 'many' is not a valid int"),
        ("workers: -1\n", "workers = -1 must be auto or a number >= 0"),
        ("amp: 'yes'\n", "not a valid bool"),
        ("freeze: layer1\n", "not a valid list"),
        ("task: segmentation\n", "this command trains a classifier"),
        ("[1, 2]\n", "YAML mapping"),
        ("epochs: [\n", "cannot read config"),
    ],
)
def test_invalid_values(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CloudpipeError, match=re.escape(message)):
        load_config("classifier", path)


def test_workers_are_auto_or_a_number(tmp_path):
    assert load_config("classifier").workers == "auto" == load_config("segmentation").workers
    path = tmp_path / "c.yaml"
    path.write_text("workers: 3\n")
    assert load_config("classifier", path).workers == 3
    assert load_config("classifier", overrides={"workers": "auto"}).workers == "auto"


def test_random_weights_train_at_the_scratch_lr(tmp_path):
    assert load_config("classifier").lr == 5e-3  # the seed recipe, ImageNet weights
    assert load_config("classifier", overrides={"weights": "none"}).lr == 5e-4
    assert load_config("classifier", overrides={"weights": "none", "lr": 0.01}).lr == 0.01  # explicit wins
    given = tmp_path / "c.yaml"
    given.write_text("weights: none\nlr: 0.002\n")
    assert load_config("classifier", given).lr == 0.002
    given.write_text("weights: none\nscratch_lr: 0.0001\n")
    assert load_config("classifier", given).lr == 0.0001


def test_segmentation_trains_a_presence_head_by_default():
    assert load_config("segmentation").head_weight == 0.1  # measured on clouds350 (benchmarks/README.md)
    assert load_config("classifier").head_weight == 0.0
