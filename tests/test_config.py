"""Config: packaged defaults (the seed recipe), YAML and command-line overrides, validation."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.config import Range, TrainConfig, config_from_dict, load_config, save_config


def test_classifier_defaults_are_the_seed_recipe():
    c = load_config("classifier")
    assert (c.arch, c.weights, c.freeze) == ("resnet34", "imagenet", ["layer1", "layer2"])
    assert (c.lr, c.patience, c.batch_size, c.accumulate, c.epochs) == (0.005, 3, 8, 4, 30)
    assert c.image_size == (512, 768) and c.val_fraction == 0.1 and c.split_seed == 69 and c.seed == 69


def test_segmentation_defaults_share_the_split():
    seg, cls = load_config("segmentation"), load_config("classifier")
    assert seg.arch == "Unet" and seg.weights == cls.weights == "imagenet"  # one rule: README step 1 and 2 alike offline
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
        ("workers: -1\n", "workers = -1 must be auto or a number in [0, 256]"),
        ("workers: 100000\n", "workers = 100000 must be auto or a number in [0, 256]"),
        ("image_size: [32000, 32000]\n", "image_size = (32000, 32000) is more than 47,040,000 pixels"),
        ("amp: 'yes'\n", "not a valid bool"),
        ("freeze: layer1\n", "not a valid list"),
        ("task: segmentation\n", "this command trains a classifier"),
        ("[1, 2]\n", "YAML mapping"),
        ("optimizer: adamx\n", "optimizer = 'adamx' is not one of adam, adamw, sgd"),
        ("schedule: step\n", "schedule = 'step' is not one of plateau, cosine, onecycle"),
        ("loss: {dice: 1}\n", "must weight some of bce, focal (the classifier's losses)"),
        ("loss: {bce: -1}\n", "weights must be finite and >= 0"),
        ("loss: {bce: 0}\n", "at least one > 0"),
        ("loss: [bce]\n", "not a valid mapping of loss terms"),
        ("loss: 'bce=x'\n", "not a valid mapping of loss terms"),
        ("mask_loss_on: present\n", "the classifier has none"),
        ("mask_loss_on: some\n", "is not one of all, present, positive"),
        ("mask_loss_on: positive\n", "the classifier has none"),
        ("cutmix: 0.5\n", "cutmix = 0.5 mixes masks"),
        ("cutmix: 2\n", "cutmix = 2.0 is a probability"),
        ("best_by: dice\n", "best_by = 'dice' is not one of score, auc"),
        ("augment: huge\n", "augment = 'huge' is not a preset"),
        ("augment: {name: Affine}\n", "augment = {'name': 'Affine'} is not a valid preset name or list of transforms"),
        ("augment: [{name: Afine}]\n", "augment[0]: unknown transform 'Afine'; did you mean Affine"),
        ("encoder_lr_ratio: 0\n", "encoder_lr_ratio = 0.0 must be in (0, 10]"),
        ("warmup_epochs: 1\n", "needs schedule cosine or onecycle"),
        ("schedule: cosine\nwarmup_epochs: 30\n", "must be below epochs (30)"),
        ("ema: 1\n", "ema = 1.0 is a decay"),
        ("ema: 0.9\nswa_epochs: 2\n", "choose one"),
        ("swa_epochs: 31\n", "at most epochs (30)"),
        ("grad_clip: -1\n", "grad_clip = -1.0 must be >= 0"),
        ("epochs: [\n", "cannot read config"),
        # non-finite and out-of-range values, refused up front (they trained NaN or crashed)
        ("weight_decay: .inf\n", "weight_decay = inf must be >= 0 (and finite)"),
        ("grad_clip: .nan\n", "grad_clip = nan must be >= 0"),
        ("head_weight: .inf\n", "head_weight = inf must be >= 0"),
        ("lr: .nan\n", "lr = nan must be in (0, 10)"),
        ("epochs: .inf\n", "epochs = inf is not a valid int"),
        ("image_size: [.inf, 64]\n", "image_size = [inf, 64] is not a valid tuple"),
        ("loss: {bce: .nan}\n", "weights must be finite and >= 0"),
        ("loss: {bce: .inf}\n", "weights must be finite and >= 0"),
        ("seed: -1\n", "seed = -1 is a seed and must be in [0, 4294967295]"),
        ("split_seed: -1\n", "split_seed = -1 is a seed and must be in [0, 4294967295]"),
        ("split_seed: 4294967296\n", "split_seed = 4294967296 is a seed"),
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

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for task, command in (("classifier", "train-classifier"), ("segmentation", "train-seg")):
        assert set(read_packaged(DEFAULT_CONFIGS[task])) <= set(fields)
        load_config(task)  # every packaged default passes its check
        params = {p.name: p for p in main.commands[command].params}
        for name, f in fields.items():
            declared = bool(f.metadata["cli"]) and f.metadata["stage"] in (None, task)
            assert (name in params) == declared, name
            if declared and isinstance(f.metadata["check"], tuple):
                assert list(params[name].type.choices) == list(f.metadata["check"])
    bad = CliRunner().invoke(main, ["train-seg", "--data", ".", "--out", "x", "--schedule", "step"])
    assert bad.exit_code == 2 and "'step' is not one of 'plateau', 'cosine', 'onecycle'" in bad.output


@pytest.mark.parametrize("check, inside, outside, message", [
    (Range(1), [1, 5], [0, -1, float("inf"), float("nan")], "must be >= 1 (and finite)"),
    (Range(0, 10, True, True), [0.001, 9.9], [0, 10, float("nan")], "must be in (0, 10)"),
    (Range(0, 1, high_open=True, what="is a decay and ", note="(0: off)"), [0, 0.99], [1, -0.1],
     "is a decay and must be in [0, 1) (0: off)"),
])
def test_ranges_hold_and_say_what_they_allow(check, inside, outside, message):
    assert all(check.holds(v) for v in inside) and not any(check.holds(v) for v in outside)
    assert check.message() == message


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
    with pytest.raises(CloudpipeError, match=re.escape("config: hflip = 2.0 is a probability and must be in [0, 1]")):
        load_config("classifier", overrides=parse_settings(["hflip=2"]))


def test_set_on_the_command_line_is_validated_before_anything_runs_and_named_options_win(tiny_data, tmp_path, monkeypatch):
    import cloudpipe.engine.train as train
    from tests.conftest import cli

    out = tmp_path / "run"
    refused = cli("train-classifier", "--data", tiny_data, "--out", out, "--set", "patience=-1")
    assert refused.exit_code == 2 and "config: patience = -1 must be >= 0" in refused.stderr and not out.exists()
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
    with pytest.raises(CloudpipeError, match="best_by = 'auc' is the classifier's choice"):
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
