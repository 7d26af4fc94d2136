"""Config: packaged defaults (the seed recipe), YAML and command-line overrides, validation."""

from __future__ import annotations

import re

import pytest
import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.config import Range, TrainConfig, config_from_dict, load_config, options, parse_settings, save_config


def test_classifier_defaults_are_the_seed_recipe():
    c = load_config("classifier")
    assert (c.arch, c.weights, c.freeze) == ("resnet34", "imagenet", ["layer1", "layer2"])
    assert (c.lr, c.patience, c.batch_size, c.accumulate, c.epochs) == (0.005, 3, 8, 4, 30)
    assert c.image_size == (512, 768) and c.val_fraction == 0.1 and c.split_seed == 69 and c.seed == 69


def test_segmentation_defaults_share_the_split():
    seg, cls = load_config("segmentation"), load_config("classifier")
    assert seg.arch == "Unet" and (seg.weights, cls.weights) == ("none", "imagenet")  # as the README says where both are introduced
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
        ("epochs: 0\n", "config: epochs: must be a whole number >= 1, got 0"),
        ("epochs: 1.5\n", "config: epochs: must be a whole number >= 1, got 1.5"),
        ("lr: -1\n", "config: lr: must be a number in (0, 10), got -1"),
        ("hflip: 2\n", "config: hflip: must be a probability in [0, 1], got 2"),
        ("image_size: [100, 96]\n", "config: image_size: must be two multiples of 32 (H W), each >= 32, got [100, 96]"),
        ("device: tpu\n", "config: device: must be one of 'auto', 'cpu' or 'cuda', got 'tpu'"),
        ("workers: many\n", "config: workers: must be auto or a whole number in [0, 256], got 'many'"),
        ("workers: -1\n", "config: workers: must be auto or a whole number in [0, 256], got -1"),
        ("workers: 100000\n", "config: workers: must be auto or a whole number in [0, 256], got 100000"),
        ("image_size: [32000, 32000]\n", "config: image_size: must be at most 47,040,000 pixels (16 competition images), got [32000, 32000]"),
        ("amp: 'yes'\n", "config: amp: must be true or false, got 'yes'"),
        ("freeze: layer1\n", "config: freeze: must be a list of submodule names, got 'layer1'"),
        ("task: segmentation\n", "config: task: must be classifier, the stage this command trains, got 'segmentation'"),
        ("[1, 2]\n", "YAML mapping"),
        ("optimizer: adamx\n", "config: optimizer: must be one of 'adam', 'adamw' or 'sgd', got 'adamx'"),
        ("schedule: step\n", "config: schedule: must be one of 'plateau', 'cosine' or 'onecycle', got 'step'"),
        ("loss: {dice: 1}\n", "config: loss: must weight some of bce, focal (the classifier's losses), got {'dice': 1}"),
        ("loss: {bce: -1}\n", "config: loss: weights must be finite and >= 0, at least one > 0, got {'bce': -1}"),
        ("loss: {bce: 0}\n", "at least one > 0"),
        ("loss: [bce]\n", "config: loss: must be a mapping of loss terms to weights (e.g. bce=0.75,dice=0.25), got ['bce']"),
        ("loss: 'bce=x'\n", "config: loss.bce: must be a mapping of loss terms to weights (e.g. bce=0.75,dice=0.25), got 'x'"),
        ("mask_loss_on: present\n", "config: mask_loss_on: restricts a mask loss; the classifier has none, got 'present'"),
        ("mask_loss_on: some\n", "config: mask_loss_on: must be one of 'all', 'present' or 'positive', got 'some'"),
        ("mask_loss_on: positive\n", "the classifier has none"),
        ("cutmix: 0.5\n", "config: cutmix: mixes masks; the classifier's labels have none, got 0.5"),
        ("cutmix: 2\n", "config: cutmix: must be a probability in [0, 1], got 2"),
        ("best_by: dice\n", "config: best_by: must be one of 'score' or 'auc', got 'dice'"),
        ("augment: huge\n", "config: augment: must be a preset (basic, light, medium, heavy) or a list of transforms, got 'huge'"),
        ("augment: {name: Affine}\n",
         "config: augment: must be a preset name or a list of {name: <albumentations transform>, <params>}, got {'name': 'Affine'}"),
        ("augment: [{name: Afine}]\n", "augment[0]: unknown transform 'Afine'; did you mean Affine"),
        ("encoder_lr_ratio: 0\n", "config: encoder_lr_ratio: must be a number in (0, 10] (1: the same lr as the rest), got 0"),
        ("warmup_epochs: 1\n", "config: warmup_epochs: needs schedule cosine or onecycle, got 1"),
        ("schedule: cosine\nwarmup_epochs: 30\n", "config: warmup_epochs: must be below epochs (30), got 30"),
        ("ema: 1\n", "config: ema: must be a decay in [0, 1) (0: no moving average), got 1"),
        ("ema: 0.9\nswa_epochs: 2\n", "config: swa_epochs: and ema both average the weights; choose one, got 2"),
        ("swa_epochs: 31\n", "config: swa_epochs: must be at most epochs (30), got 31"),
        ("grad_clip: -1\n", "config: grad_clip: must be a finite number >= 0, got -1"),
        ("epochs: [\n", "cannot read config"),
        # non-finite and out-of-range values, refused up front (they trained NaN or crashed)
        ("weight_decay: .inf\n", "config: weight_decay: must be a finite number >= 0, got inf"),
        ("grad_clip: .nan\n", "config: grad_clip: must be a finite number >= 0, got nan"),
        ("head_weight: .inf\n", "config: head_weight: must be a finite number >= 0 (0: no classification head), got inf"),
        ("lr: .nan\n", "config: lr: must be a number in (0, 10), got nan"),
        ("epochs: .inf\n", "config: epochs: must be a whole number >= 1, got inf"),
        ("image_size: [.inf, 64]\n", "config: image_size.0: must be two multiples of 32 (H W), each >= 32, got inf"),
        ("loss: {bce: .nan}\n", "weights must be finite and >= 0"),
        ("loss: {bce: .inf}\n", "weights must be finite and >= 0"),
        ("seed: -1\n", "config: seed: must be a seed in [0, 4294967295], got -1"),
        ("split_seed: -1\n", "config: split_seed: must be a seed in [0, 4294967295], got -1"),
        ("split_seed: 4294967296\n", "config: split_seed: must be a seed in [0, 4294967295], got 4294967296"),
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


def test_recipe_defaults():
    """Adam, no averaging or clipping; the classifier's seed recipe (ReduceLROnPlateau, BCE);
    segmentation with BCE + Dice on every mask and a cosine schedule after one warmup epoch (the
    one recipe element that gained on every seed measured, benchmarks/README.md)."""
    for task, loss, schedule in (("classifier", {"bce": 1.0}, ("plateau", 0)), ("segmentation", {"bce": 1.0, "dice": 1.0}, ("cosine", 1))):
        c = load_config(task)
        assert (c.optimizer, c.encoder_lr_ratio, (c.schedule, c.warmup_epochs)) == ("adam", 1.0, schedule)
        assert (c.ema, c.swa_epochs, c.grad_clip, c.mask_loss_on, c.loss) == (0.0, 0, 0.0, "all", loss)


def test_the_packaged_warmup_gives_way_to_a_short_run_or_a_plateau(tmp_path):
    assert load_config("segmentation", overrides={"epochs": 1}).warmup_epochs == 0  # no room: cosine from the start
    assert load_config("segmentation", overrides={"epochs": 2}).warmup_epochs == 1
    plateau = load_config("segmentation", overrides={"schedule": "plateau"})
    assert (plateau.schedule, plateau.warmup_epochs) == ("plateau", 0)
    with pytest.raises(CloudpipeError, match="must be below epochs"):  # asked for: still refused
        load_config("segmentation", overrides={"epochs": 1, "warmup_epochs": 1})
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 1\nwarmup_epochs: 1\n")
    with pytest.raises(CloudpipeError, match="must be below epochs"):
        load_config("segmentation", path)


def test_a_run_saved_before_the_recipe_keys_loads_with_todays_recipe(tmp_path):
    saved = load_config("segmentation").to_dict()
    for key in ("optimizer", "encoder_lr_ratio", "schedule", "warmup_epochs", "grad_clip", "loss", "mask_loss_on", "ema",
                "swa_epochs", "augment", "cutmix"):
        del saved[key]
    old = config_from_dict(saved)
    assert old == load_config("segmentation", overrides={"schedule": "plateau"}) and old.loss == {"bce": 1.0, "dice": 1.0}


def test_loss_from_yaml_or_a_command_line_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {bce: 0.75, dice: 0.25}\nmask_loss_on: present\n")
    c = load_config("segmentation", path)
    assert c.loss == {"bce": 0.75, "dice": 0.25} and c.mask_loss_on == "present"
    assert load_config("segmentation", overrides={"loss": "bce=1, lovasz=0.5"}).loss == {"bce": 1.0, "lovasz": 0.5}
    with pytest.raises(CloudpipeError, match="must weight some of bce, dice, lovasz, focal"):
        load_config("segmentation", overrides={"loss": "bce=1,jaccard=1"})
    save_config(c, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == c


def test_every_option_is_declared_once_on_its_field():
    """The YAML defaults name fields only and pass their checks; each field that declares a
    command-line option is one in its stage's command, with its allowed values enforced."""
    from click.testing import CliRunner

    from cloudpipe.cli import main
    from cloudpipe.configs import DEFAULT_CONFIGS, read_packaged

    for task, command in (("classifier", "train-classifier"), ("segmentation", "train-seg")):
        assert set(read_packaged(DEFAULT_CONFIGS[task])) <= set(TrainConfig.model_fields)
        load_config(task)  # every packaged default passes its check
        params = {p.name: p for p in main.commands[command].params if p.name in TrainConfig.model_fields}
        assert list(params) == list(options(task))
        for name, option in options(task).items():
            if isinstance(option.check, tuple):
                assert list(params[name].type.choices) == list(option.check)
            if isinstance(option.check, Range):
                assert (params[name].type.min, params[name].type.max) == (option.check.low, option.check.high)
    assert set(options("classifier")) ^ set(options("segmentation")) == {"encoder", "mask_loss_on", "cutmix", "best_by"}
    bad = CliRunner().invoke(main, ["train-seg", "--data", ".", "--out", "x", "--schedule", "step"])
    assert bad.exit_code == 2 and "'step' is not one of 'plateau', 'cosine', 'onecycle'" in bad.output


@pytest.mark.parametrize("key, inside, outside, message", [
    ("epochs", [1, 5], [0, -1, float("inf"), float("nan"), True], "must be a whole number >= 1"),
    ("lr", [0.001, 9.9], [0, 10, float("nan"), False], "must be a number in (0, 10)"),
    ("ema", [0, 0.99], [1, -0.1], "must be a decay in [0, 1) (0: no moving average)"),
])
def test_ranges_hold_and_say_what_they_allow(key, inside, outside, message):
    for value in inside:
        assert getattr(load_config("classifier", overrides={key: value}), key) == value
    for value in outside:
        with pytest.raises(CloudpipeError, match=re.escape(f"config: {key}: {message}, got {value!r}")):
            load_config("classifier", overrides={key: value})


@pytest.mark.parametrize("option, value, message", [
    ("--weight-decay", "inf", "'--weight-decay': 'inf' is not a finite number"),
    ("--lr", "nan", "'--lr': 'nan' is not a finite number"),
    ("--loss", "bce=nan", "weights must be finite and >= 0"),
    ("--seed", "-1", "'--seed': -1 is not in the range 0<=x<=4294967295"),
])
def test_the_command_line_refuses_them_too(tmp_path, tiny_data, option, value, message):
    from conftest import TINY, cli

    args = [a for k, v in TINY.items() if k not in ("image_size",) for a in (f"--{k.replace('_', '-')}", v)]
    result = cli("train-classifier", "--data", tiny_data, "--out", tmp_path / "run", *args, "--image-size", 64, 96,
                 option, value, "--quiet")
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "run").exists(), result.output


def test_yaml_bombs_are_refused(tmp_path):
    """Aliases (a few hundred bytes that expand to gigabytes), a file too large to be a config,
    nesting deeper than the parser's recursion: one line each."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    cases = {"laughs.yaml": (laughs, "aliases (*name) are not allowed; line 2"),
             "big.yaml": ("epochs: 1\n" + "#" * 70000 + "\n", "larger than 64 KiB"),
             "deep.yaml": ("a: " + "[" * 30000 + "]" * 30000 + "\n", "cannot read config"),
             "binary.yaml": ("\udcff", "cannot read config")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(CloudpipeError, match=re.escape(message)) as info:
            load_config("classifier", path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_set_reads_any_key_as_a_yaml_value_and_checks_it_as_the_yaml_would():
    from cloudpipe.engine.config import parse_settings

    values = parse_settings(["val_fraction=0.2", "hflip=0", "patience = 5", "head_weight=0.3", "image_size=[64, 96]",
                             "loss=bce=0.75,dice=0.25", "amp=false"])
    assert values == {"val_fraction": 0.2, "hflip": 0, "patience": 5, "head_weight": 0.3, "image_size": [64, 96],
                      "loss": "bce=0.75,dice=0.25", "amp": False}
    config = load_config("segmentation", overrides=values)
    assert (config.val_fraction, config.hflip, config.patience, config.head_weight) == (0.2, 0.0, 5, 0.3)
    assert config.image_size == (64, 96) and config.loss == {"bce": 0.75, "dice": 0.25} and config.amp is False
    for items, message in [(["hflip"], "expected key=value"), (["=1"], "expected key=value"),
                           (["hflips=0.5"], "unknown key 'hflips'; valid keys: task, arch"),
                           (["freeze=[layer1"], "not a YAML value"), (["hflip="], "no value")]:
        with pytest.raises(CloudpipeError, match=re.escape(message)):
            parse_settings(items)
    with pytest.raises(CloudpipeError, match=re.escape("config: hflip: must be a probability in [0, 1], got 2")):
        load_config("classifier", overrides=parse_settings(["hflip=2"]))


def test_set_on_the_command_line_is_validated_before_anything_runs_and_named_options_win(tiny_data, tmp_path, monkeypatch):
    import cloudpipe.engine.train as train
    from tests.conftest import cli

    out = tmp_path / "run"
    refused = cli("train-classifier", "--data", tiny_data, "--out", out, "--set", "patience=-1")
    assert refused.exit_code == 2 and "config: patience: must be a whole number >= 0, got -1" in refused.stderr and not out.exists()
    seen = []
    monkeypatch.setattr(train, "train_run", lambda config, *a, **k: seen.append(config) or [])
    ok = cli("train-seg", "--data", tiny_data, "--out", out, "--set", "val_fraction=0.25", "--set", "epochs=7",
             "--epochs", "2", "--set", "hflip=0")
    assert ok.exit_code == 0, ok.output
    assert (seen[0].val_fraction, seen[0].epochs, seen[0].hflip) == (0.25, 2, 0.0)


def test_augmentations_by_name_are_saved_as_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("augment:\n  - {name: Affine, rotate: [-10, 10], p: 0.5}\n  - {name: GridDistortion, p: 0.3}\n")
    c = load_config("segmentation", path, {"cutmix": 0.5})
    assert c.augment == [{"name": "Affine", "rotate": [-10, 10], "p": 0.5}, {"name": "GridDistortion", "p": 0.3}]
    save_config(c, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == c
    assert load_config("segmentation", overrides={"augment": "[{name: ChannelShuffle, p: 0.1}]"}).augment == [
        {"name": "ChannelShuffle", "p": 0.1}]  # a list on the command line, in YAML
    assert load_config("classifier", overrides={"augment": "heavy"}).augment == "heavy"
    assert load_config("segmentation").augment == "basic" and load_config("segmentation").cutmix == 0.0
    with pytest.raises(CloudpipeError, match="config: best_by: is the classifier's choice; segmentation picks best.pt by Dice, got 'auc'"):
        load_config("segmentation", overrides={"best_by": "auc"})


@pytest.mark.parametrize("task, name", [("segmentation", "seg_competition.yaml"), ("classifier", "classifier_competition.yaml")])
def test_the_competition_configs_hold_the_medallists_recipe(task, name):
    from importlib import resources

    c = load_config(task, resources.files("cloudpipe.configs") / name, {"weights": "none"})
    assert (c.image_size, c.optimizer, c.encoder_lr_ratio, c.schedule, c.augment) == ((384, 576), "adamw", 0.1, "onecycle", "heavy")
    assert c.ema > 0 and c.lr == 0.001  # lr given in the file: not replaced by scratch_lr
    if task == "segmentation":
        assert c.loss == {"bce": 0.75, "dice": 0.25} and c.encoder.startswith("tu-")
    else:
        assert c.best_by == "auc" and c.arch.startswith("timm:") and c.freeze == []


def test_set_reads_its_values_as_a_config_file_is_read():
    """No aliases (a few hundred bytes of them expand to gigabytes: MemoryError), nothing larger
    than a config file may be, nesting deeper than the parser goes: one line each, as ``--config``."""
    from cloudpipe.engine.config import parse_settings

    for item, message in [("freeze=[&a layer1, *a]", "--set 'freeze=[&a layer1, *a]': not a YAML value (aliases (*name) "
                                                     "are not allowed; line 1)"),
                          ("hflip=" + "9" * 70_000, "larger than 64 KiB, as no config file may be"),
                          ("freeze=" + "[" * 30_000 + "]" * 30_000, "not a YAML value")]:
        with pytest.raises(CloudpipeError, match=re.escape(message)) as info:
            parse_settings([item])
        assert "\n" not in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(CloudpipeError, match=re.escape("config: augment: not a YAML list (aliases (*name) are not allowed")):
        load_config("classifier", overrides={"augment": "[&a {name: HorizontalFlip}, *a]"})  # --augment's text alike


@pytest.mark.parametrize("overrides", [{"hflip": "x" * 100_000}, {"arch": ["y" * 100_000]}, {"arch": "y" * 100_000},
                                       {"weights": "/" + "w" * 100_000}, {"encoder": "e" * 300},
                                       {"augment": [{"name": "x" * 100_000}]}, {"augment": "z" * 100_000},
                                       {"augment": [{"name": "Affine", "rotate": "x" * 100_000}]}, {"epochz" * 20_000: 1}])
def test_a_long_value_is_cut_in_its_error_line(overrides):
    with pytest.raises(CloudpipeError) as info:
        load_config("classifier", overrides={"image_size": [64, 96], **overrides})
    message = str(info.value)
    assert "..." in message and len(message) < 700 and "\n" not in message, message
    with pytest.raises(CloudpipeError) as info:
        parse_settings(["x" * 100_000 + "=1"])
    assert "x" * 81 not in str(info.value)


@pytest.mark.parametrize("task, steps, message", [
    ("segmentation", [{"name": "HistogramMatching", "p": 0.5}], "augment[0]: HistogramMatching reads hm_metadata beside each image"),
    ("classifier", [{"name": "HorizontalFlip"}, {"name": "FDA", "p": 0.1}], "augment[1]: FDA reads fda_metadata"),
    ("classifier", [{"name": "MaskDropout", "p": 0.5}], "augment[0]: MaskDropout reads masks, which the classifier's images have none of"),
    ("segmentation", [{"name": "PadIfNeeded", "min_height": 100_000, "min_width": 100_000, "p": 0.0}],
     "augment[0]: PadIfNeeded: min_height = 100000 is larger than 6858 pixels"),
])
def test_augmentations_training_cannot_run_are_refused_when_the_config_loads(task, steps, message):
    with pytest.raises(CloudpipeError, match=re.escape(f"config: {message}")):
        load_config(task, overrides={"augment": steps, "image_size": [64, 96]})


def test_a_saved_config_is_written_as_before():
    """config.yaml is what --resume compares: the same bytes for the same settings (numbers as
    floats where the key is a float, ints as given, keys in their order)."""
    c = load_config("segmentation", overrides={"image_size": [64, 96], "hflip": 0, "lr": "1e-3", "epochs": 2.0, "seed": "7",
                                               "loss": "bce=1,dice=0.5", "workers": 3})
    text = yaml.safe_dump(c.to_dict(), sort_keys=False)
    assert text.startswith("task: segmentation\narch: Unet\nencoder: resnet34\nweights: none\nfreeze: []\nimage_size:\n- 64\n- 96\n"
                           "epochs: 2\nbatch_size: 8\naccumulate: 1\nlr: 0.001\n")
    assert "\nhflip: 0.0\n" in text and "\nseed: 7\n" in text and "\nloss:\n  bce: 1.0\n  dice: 0.5\n" in text
    assert "\nworkers: 3\n" in text and list(yaml.safe_load(text)) == list(TrainConfig.model_fields)
