"""The shared training loop, on tiny synthetic data, CPU, random weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import presence, read_train
from cloudpipe.engine.checkpoint import load_checkpoint
from cloudpipe.engine.config import load_config
from cloudpipe.engine.stages import stage_for
from cloudpipe.engine.train import make_splits, train_run
from tests.conftest import CLASSES
from tests.conftest import TINY as CONFTEST_TINY

TINY = {**{k: v for k, v in CONFTEST_TINY.items() if k != "lr"}, "batch_size": 4, "accumulate": 2}
"""conftest's tiny run with gradient accumulation (two micro-batches a step), which resume must
replay, and without an lr, so the stage's own (scratch_lr for random weights) applies."""


def classifier_config(**overrides):
    return load_config("classifier", overrides={**TINY, **overrides})


def test_run_writes_all_files(tiny_data, tmp_path):
    run = tmp_path / "run"
    [result] = train_run(classifier_config(epochs=2), tiny_data, run, progress=False)
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv", "val_probs.csv"} <= {p.name for p in run.iterdir()}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["image_size"] == [64, 96] and saved["lr"] == 0.0005  # scratch_lr: random weights
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "seconds", *(f"val_{c}" for c in CLASSES)} <= set(metrics)
    # Checkpoints hold only tensors and plain values.
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        assert state["classes"] == list(CLASSES) and state["config"]["arch"] == "tiny"
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert result.best_epoch == int(metrics.loc[metrics["val_accuracy"].idxmax(), "epoch"])
    # val_probs: the validation images of the split, probabilities in [0, 1].
    probs = pd.read_csv(run / "val_probs.csv")
    assert list(probs.columns) == ["image", *CLASSES]
    labels = presence(read_train(tiny_data))
    _, val = make_splits(classifier_config(), labels)[0]
    assert sorted(probs["image"]) == sorted(val)
    assert probs[list(CLASSES)].to_numpy().min() >= 0 and probs[list(CLASSES)].to_numpy().max() <= 1


def test_compiled_training_saves_plain_weights(tiny_data, tmp_path):
    """``compile: true`` trains through torch.compile; the checkpoints keep the plain module's
    names, so a compiled run predicts like any other."""
    from cloudpipe.engine.infer import load_run

    run = tmp_path / "run"
    [result] = train_run(classifier_config(epochs=1, compile=True), tiny_data, run, progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    assert not any("_orig_mod" in k for k in load_checkpoint(run / "best.pt")["model"])
    assert load_run(run, "classifier", torch.device("cpu")).config.compile is True


def initial_state(config) -> dict:
    """The weights a run of ``config`` starts from (seeded as the Trainer seeds them)."""
    torch.manual_seed(config.seed)
    return stage_for(config).build_model(weights="none").state_dict()


def test_frozen_layers_do_not_change(tiny_data, tmp_path):
    """Neither their weights nor their BatchNorm running statistics (kept in eval mode)."""
    config = classifier_config(epochs=1, freeze=["layer1"])
    train_run(config, tiny_data, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    fresh = initial_state(config)
    for name in ("0.weight", "1.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(state[f"body.layer1.{name}"], fresh[f"body.layer1.{name}"]), name
        assert not torch.equal(state[f"body.layer2.{name}"], fresh[f"body.layer2.{name}"]), name


def test_how_a_run_is_executed_may_change_on_resume_but_not_what_it_learns(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_run(classifier_config(epochs=1), tiny_data, run, progress=False)
    # epochs already done: nothing trains (and nothing compiles); only the settings are checked
    train_run(classifier_config(epochs=1, compile=True, workers="auto"), tiny_data, run, resume=True, progress=False)
    with pytest.raises(CloudpipeError, match="different settings.*lr"):
        train_run(classifier_config(epochs=1, lr=0.1), tiny_data, run, resume=True, progress=False)


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    cfg = dict(epochs=3, lr=1e-3, patience=0)  # patience 0: the LR schedule must be restored too
    train_run(classifier_config(**cfg), tiny_data, tmp_path / "full", progress=False)
    train_run(classifier_config(**{**cfg, "epochs": 1}), tiny_data, tmp_path / "part", progress=False)
    train_run(classifier_config(**cfg), tiny_data, tmp_path / "part", resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    assert part["epoch"] == 3
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    a, b = pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(tmp_path / "part" / "metrics.csv")
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["lr"], b["lr"])


@pytest.mark.parametrize("recipe", [  # plateau: test_resume_equals_uninterrupted
    dict(schedule="cosine", warmup_epochs=1, ema=0.9),
    dict(schedule="onecycle", optimizer="adamw", encoder_lr_ratio=0.1, grad_clip=1.0),
    dict(optimizer="sgd", swa_epochs=2),
    dict(task="segmentation", augment="heavy", cutmix=0.5, mask_loss_on="positive"),
    dict(augment=[{"name": "GridDistortion", "p": 0.5}, {"name": "InvertImg", "p": 0.2}], best_by="auc"),
    dict(arch="timm:mobilenetv3_small_050", freeze=[], encoder_lr_ratio=0.1),
    dict(task="segmentation", arch="Unet", encoder="tu-mobilenetv3_small_050", epochs=2),
], ids=["cosine+warmup+ema", "onecycle+adamw+ratio+clip", "sgd+swa", "seg+heavy+cutmix+positive", "listed+auc",
        "timm-classifier", "seg+timm-encoder"])
def test_a_run_interrupted_and_resumed_replays_every_recipe_exactly(tiny_data, tmp_path, monkeypatch, recipe):
    """Schedules stepped per optimizer step, the EMA / SWA average, the optimizer's groups, the
    augmentations and CutMix are all restored: the resumed run ends where the uninterrupted one does."""
    from cloudpipe.engine.train import Trainer

    recipe = dict(recipe)
    config = load_config(recipe.pop("task", "classifier"), overrides={**TINY, "epochs": 3, "lr": 1e-3, **recipe})
    train_run(config, tiny_data, tmp_path / "full", progress=False)
    save = Trainer.save

    def save_then_stop(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 0:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Trainer, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train_run(config, tiny_data, tmp_path / "part", progress=False)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    train_run(config, tiny_data, tmp_path / "part", resume=True, progress=False)
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    averaged = "ema" in recipe or "swa_epochs" in recipe
    assert ({"trained", "average"} <= set(full)) == averaged
    for what in ("model", "trained", "average"):
        for key, value in full.get(what, {}).items():
            torch.testing.assert_close(part[what][key], value, rtol=1e-5, atol=1e-6, msg=f"{what} {key}")
    a, b = pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(tmp_path / "part" / "metrics.csv")
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["lr"], b["lr"])
    if recipe.get("schedule"):  # stepped per optimizer step: the lr moved within every epoch
        assert a["lr"].nunique() == 3


def test_runs_whose_schedule_depends_on_their_length_keep_their_epochs(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_run(classifier_config(epochs=2, schedule="cosine"), tiny_data, run, progress=False)
    with pytest.raises(CloudpipeError, match="epochs: 2 -> 3.*epochs sets this run's schedule"):
        train_run(classifier_config(epochs=3, schedule="cosine"), tiny_data, run, resume=True, progress=False)


def test_the_average_is_validated_and_saved_as_the_model(tiny_data, tmp_path):
    """With EMA, best.pt holds the average (weights_only-loadable, what predict runs), the
    metrics are the average's, and last.pt keeps the trained weights too."""
    from cloudpipe.engine.infer import load_run

    run = tmp_path / "run"
    train_run(classifier_config(epochs=1, ema=0.5), tiny_data, run, progress=False)  # one epoch: it is the best
    last, best = load_checkpoint(run / "last.pt"), torch.load(run / "best.pt", weights_only=True)
    key = "body.fc.weight"
    assert not torch.equal(last["model"][key], last["trained"][key])
    torch.testing.assert_close(last["model"][key], last["average"][f"module.{key}"])
    torch.testing.assert_close(best["model"][key], last["model"][key])
    assert not any(k.startswith("module.") for k in best["model"])
    loaded = load_run(run, "classifier", torch.device("cpu")).models[0]
    torch.testing.assert_close(loaded.state_dict()[key], best["model"][key])


def test_gradient_clipping_bounds_the_step(tiny_data, tmp_path):
    """SGD's step is lr x gradient: clipped to a tiny norm, the weights barely move."""
    moved = {}
    for clip in (0.0, 1e-6):
        run = tmp_path / f"clip{clip}"
        config = classifier_config(epochs=1, optimizer="sgd", lr=0.1, grad_clip=clip, freeze=[])
        train_run(config, tiny_data, run, progress=False)
        fresh = initial_state(config)["body.fc.weight"]
        moved[clip] = (load_checkpoint(run / "last.pt")["model"]["body.fc.weight"] - fresh).abs().max().item()
    assert moved[1e-6] < 1e-5 < moved[0.0]


@pytest.mark.parametrize("recipe", [
    dict(loss="bce=0.75,dice=0.25"), dict(loss="bce=1,lovasz=1", mask_loss_on="present"), dict(loss="focal=1,dice=1"),
    dict(mask_loss_on="present", optimizer="adamw", encoder_lr_ratio=0.1, schedule="onecycle"),
    dict(optimizer="sgd", schedule="cosine", warmup_epochs=1, swa_epochs=1, grad_clip=0.5, epochs=2),
])
def test_segmentation_trains_with_every_recipe_name(tiny_data, tmp_path, recipe):
    config = load_config("segmentation", overrides={**TINY, "epochs": 1, "head_weight": 0.1, **recipe})
    [result] = train_run(config, tiny_data, tmp_path / "run", progress=False)
    assert all(np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]) for row in result.history)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"] == config.loss


def test_classifier_trains_with_focal_loss(tiny_data, tmp_path):
    [result] = train_run(classifier_config(epochs=1, loss="focal=1,bce=0.5"), tiny_data, tmp_path / "run", progress=False)
    assert np.isfinite(result.history[0]["train_loss"])


def test_loss_falls_on_easy_data(tmp_path):
    from cloudpipe.data.synth import make_dataset

    data = make_dataset(tmp_path / "data", train=40, test=2, shape=(64, 96), seed=5, progress=False).out_dir
    cfg = classifier_config(epochs=12, lr=1e-2, freeze=[], batch_size=8, accumulate=1, hflip=0, vflip=0, noise=0,
                            brightness_contrast=0, amp=False)
    [result] = train_run(cfg, data, tmp_path / "run", progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.75 * losses[0], losses


def test_kfold_out_of_fold_covers_every_image_once(tiny_data, tmp_path):
    run = tmp_path / "run"
    results = train_run(classifier_config(epochs=1, folds=3), tiny_data, run, progress=False)
    assert len(results) == 3
    assert all((run / f"fold{i}" / "best.pt").exists() for i in range(3))
    oof = pd.read_csv(run / "val_probs.csv")
    train_images = list(presence(read_train(tiny_data)).index)
    assert list(oof["image"]) == train_images  # each once, in train.csv order
    folds = [set(pd.read_csv(run / f"fold{i}" / "val_probs.csv")["image"]) for i in range(3)]
    assert sum(len(f) for f in folds) == len(train_images) and set().union(*folds) == set(train_images)


def test_single_fold_then_the_rest(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_run(classifier_config(epochs=1, folds=2), tiny_data, run, fold=1, progress=False)
    assert (run / "fold1" / "best.pt").exists() and not (run / "fold0").exists()
    assert not (run / "val_probs.csv").exists()  # out-of-fold only once all folds exist
    train_run(classifier_config(epochs=1, folds=2), tiny_data, run, fold=0, progress=False)
    assert len(pd.read_csv(run / "val_probs.csv")) == 24


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_trains_and_refuses_to_mix_runs(tiny_data, tmp_path):
    args = ["train-classifier", "--data", tiny_data, "--out", tmp_path / "run", "--arch", "tiny", "--weights", "none", "--epochs", "1",
            "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet"]
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert "best epoch 1/1" in first.output
    again = run_cli(*args)
    assert again.exit_code == 2 and "holds another run" in again.stderr
    more = run_cli(*args[:-1], "--resume", "--epochs", 2, "--quiet")  # later --epochs wins
    assert more.exit_code == 0, more.output
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
    changed = run_cli(*args, "--resume", "--lr", "0.1")
    assert changed.exit_code == 2 and "lr" in changed.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume"], "nothing to resume"),
        (["--image-size", "65", "96"], "multiples of 32"),
        (["--fold", "1"], "--fold needs --folds"),
        (["--folds", "1"], "folds"),
        (["--folds", "100000000"], "--folds must be between 2 and the number of images (24), got 100000000"),  # no 10^8 paths
        (["--weights", "/nonexistent.pth"], "not found"),
        (["--optimizer", "adamx"], "'adamx' is not one of 'adam', 'adamw', 'sgd'"),
        (["--loss", "dice=1"], "must weight some of bce, focal"),
        (["--schedule", "plateau", "--warmup-epochs", "1"], "needs schedule cosine or onecycle"),
        (["--ema", "1"], "--ema"),
        (["--augment", "[{name: Afine, p: 1}]"], "augment[0]: unknown transform 'Afine'; did you mean Affine"),
        (["--augment", "heavier"], "config: augment: must be a preset (basic, light, medium, heavy) or a list of transforms, got 'heavier'"),
        (["--arch", "resnet35"], "unknown classifier arch 'resnet35'; did you mean"),
        (["--arch", "timm:resnet35"], "unknown timm model 'resnet35'; did you mean"),
        (["--best-by", "dice"], "'dice' is not one of 'score', 'auc'"),
    ],
)
def test_cli_bad_options(tiny_data, tmp_path, extra, message):
    result = run_cli("train-classifier", "--data", tiny_data, "--out", tmp_path / "run", "--arch", "tiny", "--weights", "none",
                     "--epochs", 1, "--image-size", 64, 96, "--workers", 0, "--quiet", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_config_file(tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    result = run_cli("train-classifier", "--data", tiny_data, "--out", tmp_path / "run", "--config", bad)
    assert result.exit_code == 2 and "unknown key(s) epochz" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "truncated", "resized", "no_csv"])
def test_bad_data(tiny_data, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = sorted((data / "train_images").iterdir())[3]
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "resized":
        import cv2

        cv2.imwrite(str(victim), np.zeros((32, 48, 3), np.uint8))
    else:
        (data / "train.csv").unlink()
    result = run_cli("train-classifier", "--data", data, "--out", tmp_path / "run", "--arch", "tiny", "--weights", "none",
                     "--image-size", 64, 96, "--quiet")
    assert result.exit_code == 2, result.output
    assert (victim.name if damage != "no_csv" else "train.csv") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "cloudpipe", "train-classifier", "--data", str(tiny_data), "--out", str(run), "--arch", "tiny", "--weights", "none",
           "--epochs", "2", "--image-size", "64", "96", "--workers", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]  # written once per epoch, by rank 0 only
    assert proc.stdout.count("best epoch") == 1
    assert len(pd.read_csv(run / "val_probs.csv")) == len(make_splits(classifier_config(), presence(read_train(tiny_data)))[0][1])


def _stopped_in_first_epoch(data, run, monkeypatch, **config):
    """A run killed before its first epoch ended: config.yaml and splits.csv, no checkpoint."""
    from cloudpipe.engine.train import Trainer

    def killed(self, epoch, progress):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train_run(classifier_config(epochs=1, **config), data, run, progress=False)
    assert (run / "config.yaml").exists() and not (run / "last.pt").exists()


def test_a_run_that_never_finished_an_epoch_does_not_block_a_fresh_start(tiny_data, tmp_path, monkeypatch):
    """--resume starts it again from its first epoch; so does the same command, or a corrected
    one, without --resume (it used to refuse: "holds another run"); once an epoch is finished
    the folder needs --resume as before."""
    run = tmp_path / "run"
    _stopped_in_first_epoch(tiny_data, run, monkeypatch)
    [result] = train_run(classifier_config(epochs=1), tiny_data, run, resume=True, progress=False)
    assert result.best_epoch == 1 and load_checkpoint(run / "last.pt")["epoch"] == 1
    run = tmp_path / "again"
    _stopped_in_first_epoch(tiny_data, run, monkeypatch, lr=0.5)
    [result] = train_run(classifier_config(epochs=1), tiny_data, run, progress=False)  # corrected: the default lr
    assert result.epochs == 1 and load_checkpoint(run / "last.pt")["config"]["lr"] != 0.5
    with pytest.raises(CloudpipeError, match="pass --resume"):
        train_run(classifier_config(epochs=1), tiny_data, run, progress=False)


def test_a_run_that_diverges_stops_with_one_line_and_its_fix_starts_afresh(tiny_data, tmp_path):
    """A loss that becomes NaN stops the run at that epoch (it used to be saved as the best
    model, with empty cells in val_probs.csv, and exit 0); the corrected command then runs."""
    args = ["train-classifier", "--data", tiny_data, "--out", tmp_path / "run", "--arch", "tiny", "--weights", "none",
            "--epochs", 2, "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet"]
    diverged = run_cli(*args, "--optimizer", "sgd", "--weight-decay", "1e30", "--lr", 9, "--batch-size", 2)
    assert diverged.exit_code == 2 and "Traceback" not in diverged.output, diverged.output
    [line] = diverged.stderr.strip().splitlines()
    assert "epoch 1: train_loss is nan: training diverged" in line and str(tmp_path / "run") in line
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "val_probs.csv").exists()
    fixed = run_cli(*args)
    assert fixed.exit_code == 0, fixed.output
    assert pd.read_csv(tmp_path / "run" / "val_probs.csv").notna().all().all()


@pytest.mark.parametrize("command", ["train-classifier", "train-seg"])
@pytest.mark.parametrize("rle, problem", [("6144 2", "ends past pixel 6144 of a 64x96 mask"), ("1  2", "single spaces")])
def test_bad_mask_in_train_csv_stops_both_stages_before_training(tiny_data, tmp_path, command, rle, problem):
    # A bad mask used to surface only at tune-threshold, after the classifier had trained.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    lines = (data / "train.csv").read_text().splitlines()
    label = lines[6].split(",")[0]
    lines[6] = f"{label},{rle}"  # line 7 of the file
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    result = run_cli(command, "--data", data, "--out", tmp_path / "run", "--arch", "tiny", "--weights", "none",
                     "--epochs", 1, "--image-size", 64, 96, "--workers", 0, "--quiet")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {data / 'train.csv'}, line 7: {label}: ") and problem in line, line
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_start_writes_nothing_so_its_fix_works(tiny_data, tmp_path):
    out = tmp_path / "runs" / "cls"
    args = ["train-classifier", "--data", tiny_data, "--out", out, "--arch", "tiny", "--epochs", 1,
            "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet"]
    failed = run_cli(*args)  # --weights imagenet (the default), which the stand-in network has not
    assert failed.exit_code == 2 and "pass --weights none" in failed.stderr, failed.output
    assert len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing in --out (it held config.yaml and splits.csv), no empty folder
    fixed = run_cli(*args, "--weights", "none")  # what the error recommends: it used to be "holds another run"
    assert fixed.exit_code == 0, fixed.output
    assert (out / "best.pt").is_file()


def test_epoch_lines_go_to_the_cloudpipe_logger_and_the_cli_prints_them(tiny_data, tmp_path, caplog, monkeypatch):
    import logging

    from tests.conftest import cli

    monkeypatch.setattr(logging.getLogger("cloudpipe"), "propagate", True)  # the CLI, if run before, turned it off
    with caplog.at_level(logging.INFO, logger="cloudpipe"):
        train_run(classifier_config(epochs=1), tiny_data, tmp_path / "lib", progress=False)
    assert {r.name for r in caplog.records} == {"cloudpipe.engine.train"}
    assert {r.message.split("  ")[0] for r in caplog.records} == {"epoch 1/1"}
    logging.getLogger("cloudpipe").setLevel(logging.WARNING)  # a notebook silences the library
    caplog.clear()
    train_run(classifier_config(epochs=1), tiny_data, tmp_path / "quiet", progress=False)
    assert not caplog.records
    result = cli("train-classifier", "--data", tiny_data, "--out", tmp_path / "cli", "--arch", "tiny", "--weights", "none",
                 "--epochs", 1, "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0 and result.output.count("epoch 1/1  train_loss") == 1, result.output


def test_two_trainings_never_share_a_run_folder(tiny_data, tmp_path):
    """While one training holds a run folder (its lock beside it), another into the same --out is
    refused at once and writes nothing; one fold's training claims that fold alone."""
    from cloudpipe.data.outputs import output_lock
    from cloudpipe.data.runfolder import fold_dir

    run = tmp_path / "run"
    with output_lock(run):
        result = run_cli("train-classifier", "--data", tiny_data, "--out", run, "--arch", "tiny", "--weights", "none",
                         "--epochs", 1, "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"{run}: is being written by another cloudpipe process" in result.stderr
    assert not run.exists()
    run.mkdir()
    with output_lock(fold_dir(run, 1)):  # fold 1 is training elsewhere: fold 0 may train, the whole run may not
        config = classifier_config(epochs=1, folds=2)
        train_run(config, tiny_data, run, fold=0, progress=False)
        assert (fold_dir(run, 0) / "best.pt").exists()
        with pytest.raises(CloudpipeError, match="fold1: is being written by another cloudpipe process"):
            train_run(config, tiny_data, run, resume=True, progress=False)


@pytest.mark.parametrize("tamper, extra, message", [
    # the epochs of a onecycle run edited in config.yaml: last.pt still says what the schedule was built for
    ("epochs_in_yaml", {"schedule": "onecycle", "epochs": 3}, "last.pt: continues a run with different settings (epochs: 2 -> 3)"),
    ("arch_in_yaml", {"arch": "resnet18"}, "last.pt: continues a run with different settings (arch: 'tiny' -> 'resnet18')"),
    ("best_as_last", {}, "last.pt: checkpoint has no optimizer, scheduler, scaler, rng, history: not a last.pt"),
    ("epoch_type", {}, "last.pt: checkpoint's epoch is not int (str)"),
    ("epoch_range", {}, "last.pt: checkpoint's epoch -1 and best_epoch 1 are not 0 <= best_epoch <= epoch"),
    ("image_gone", {}, "splits.csv: continues a run trained on other images than --data's: 1 image(s) no longer in train.csv"),
])
def test_each_resume_mismatch_is_one_line(tiny_data, tmp_path, tamper, extra, message):
    run, data = tmp_path / "run", tiny_data

    def args(**given):
        return ["train-classifier", "--data", data, "--out", run, "--arch", given.get("arch", "tiny"), "--weights", "none",
                "--epochs", given.get("epochs", 3), "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet",
                "--schedule", extra.get("schedule", "plateau")]

    assert run_cli(*args(epochs=2)).exit_code == 0
    if tamper.endswith("_in_yaml"):
        saved = yaml.safe_load((run / "config.yaml").read_text())
        key = tamper.removesuffix("_in_yaml")
        saved[key] = extra[key]
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
    elif tamper == "best_as_last":
        shutil.copy(run / "best.pt", run / "last.pt")
    elif tamper.startswith("epoch_"):
        state = torch.load(run / "last.pt", weights_only=True)
        torch.save({**state, "epoch": "2" if tamper == "epoch_type" else -1, "best_epoch": 1}, run / "last.pt")
    else:
        data = tmp_path / "data"
        shutil.copytree(tiny_data, data)
        lines = (data / "train.csv").read_text().splitlines()
        gone = lines[1].split("_")[0]
        (data / "train.csv").write_text("\n".join(line for line in lines if not line.startswith(gone)) + "\n")
    result = run_cli(*args(**extra), "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line, line


def test_the_classifier_records_auc_per_class_and_keeps_its_best_epoch_by_it(tiny_data, tmp_path):
    [result] = train_run(classifier_config(epochs=2, best_by="auc"), tiny_data, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"val_accuracy", "val_auc", *(f"auc_{c}" for c in CLASSES)} <= set(metrics.columns)
    aucs = [row["val_auc"] for row in result.history]
    assert result.best_score == max(aucs) and result.best_epoch == aucs.index(max(aucs)) + 1
    assert load_checkpoint(tmp_path / "run" / "best.pt")["score_name"] == "val_auc"


@pytest.mark.parametrize("planted, kind, folds", [
    ("fold0", "link_dir", 2), ("fold1/tensorboard", "link_dir", 2), ("tensorboard", "link_dir", 0),
    ("tensorboard", "file", 0), ("fold0", "file", 2), (".", "link_dir", 0),
    *((name, "link_file", 0) for name in ("best.pt", "last.pt", "metrics.csv", "val_probs.csv", "splits.csv", "config.yaml")),
    ("fold1/best.pt", "link_file", 2), ("val_probs.csv", "link_file", 2),
])
def test_training_never_writes_through_a_link_nor_meets_a_file_where_it_makes_a_folder(tiny_data, tmp_path, planted,
                                                                                       kind, folds):
    """A link at a folder or file training fills (a run's, a fold's, tensorboard/, each file) got
    best.pt, last.pt, metrics.csv, ... written where it pointed, exit 0; a plain file named
    tensorboard crashed after the first epoch with a traceback. Each is one line up front, exit 2,
    nothing written, the link's target untouched."""
    run, elsewhere = tmp_path / "runs" / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me\n")
    path = run / planted if planted != "." else run
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link_dir":
        path.symlink_to(elsewhere, target_is_directory=True)
    elif kind == "link_file":
        path.symlink_to(elsewhere / "precious.txt")
    else:
        path.write_text("not a folder\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli("train-classifier", "--data", tiny_data, "--out", run, "--arch", "tiny", "--weights", "none",
                     "--epochs", 1, "--image-size", 64, 96, "--workers", 0, "--device", "cpu", "--quiet", "--folds", folds)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = result.stderr.strip().splitlines()
    what = ("exists and is not a folder, where a folder is written" if kind == "file"
            else "is a symbolic link, which cloudpipe never follows, writes through or replaces")
    assert line == f"error: {path}: {what}; {'move it away' if kind == 'file' else 'remove it'}, or choose another --out", line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, here or there
    assert (elsewhere / "precious.txt").read_text() == "keep me\n"


def test_each_models_state_is_worked_out_once_from_the_folder_and_the_command(tiny_data, tiny_classifier_run, tmp_path):
    """Fresh, in progress, failed before its first epoch: read from the folder, nothing written."""
    from cloudpipe.data.kaggle import load_train_data
    from cloudpipe.engine.train import Progress, run_state
    from tests.conftest import tiny_config

    data, config = load_train_data(tiny_data), tiny_config()
    [fresh] = run_state(tmp_path / "new", config, data).models
    assert (fresh.progress, fresh.trained, fresh.checkpoint) == (Progress.FRESH, 0, None) and not (tmp_path / "new").exists()
    run = shutil.copytree(tiny_classifier_run, tmp_path / "run")
    files = sorted(run.rglob("*"))
    with pytest.raises(CloudpipeError, match="holds another run"):
        run_state(run, config, data)
    state = run_state(run, tiny_config(epochs=3), data, resume=True)
    [model] = state.models
    assert state.recorded and model.progress is Progress.IN_PROGRESS and model.trained == model.checkpoint["epoch"] == 1
    assert sorted(run.rglob("*")) == files
    for name in ("last.pt", "best.pt", "metrics.csv"):  # as a run stopped before its first epoch ended leaves it
        (run / name).unlink()
    [again] = run_state(run, config, data, resume=True).models
    assert (again.progress, again.trained) == (Progress.RESTARTED, 0)
