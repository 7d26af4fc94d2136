"""Pseudo-labels: the confidence rule, the new data folder, and training that never validates on them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from cloudpipe.algorithms.pseudo import PseudoRule, confident
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.rle import rle2mask
from cloudpipe.data.kaggle import PSEUDO_CSV, load_train_data, presence, read_mask_csv, read_train, to_wide
from cloudpipe.engine.config import load_config
from cloudpipe.engine.train import make_splits
from cloudpipe.pipeline.pseudo import pseudo_label
from tests.conftest import CLASSES, TINY, cli, finished_meanwhile, train_tiny


def test_an_image_is_confident_when_every_class_is_decided_and_the_masks_agree():
    rule = PseudoRule(min_confidence=0.9, min_area=10)
    probs = np.array([[0.95, 0.05, 0.92, 0.01],   # sure, masks agree
                      [0.95, 0.5, 0.92, 0.01],    # Flower undecided
                      [0.95, 0.05, 0.92, 0.01],   # Gravel's mask is empty though its probability is high
                      [0.95, 0.05, 0.92, 0.01],   # a mask too small
                      [0.02, 0.05, 0.01, 0.01]])  # sure: nothing there
    areas = np.array([[50, 0, 30, 0], [50, 0, 30, 0], [50, 0, 0, 0], [50, 0, 9, 0], [0, 0, 0, 0]])
    assert confident(probs, areas, rule).tolist() == [True, False, False, False, True]
    assert confident(probs, areas, PseudoRule(min_confidence=0.9)).tolist() == [True, False, False, True, True]
    for bad, message in [(dict(min_confidence=0.5), r"min_confidence = 0.5 must be in \(0.5, 1\]"),
                         (dict(min_area=-1), "min_area = -1 must be >= 0")]:
        with pytest.raises(CloudpipeError, match=message):
            PseudoRule(**bad)


def _inputs(data, tmp_path):
    """The test truth as a submission, with probabilities sure of it except on two images."""
    truth = read_mask_csv(data / "test_truth.csv")
    seg = tmp_path / "sub.csv"
    truth[["Image_Label", "EncodedPixels"]].to_csv(seg, index=False)
    probs = presence(truth).astype(float) * 0.9 + 0.05  # 0.95 present, 0.05 absent
    images = list(probs.index)
    probs.iloc[0, 1] = 0.6  # undecided
    probs.loc[images[1], probs.columns[probs.loc[images[1]] < 0.5][0]] = 0.97  # sure of a class whose mask is empty
    path = tmp_path / "sub_probs.csv"
    probs.rename_axis("image").reset_index().to_csv(path, index=False)
    return seg, path, images[2:], truth


def test_the_new_folder_trains_on_the_confident_test_images_and_never_validates_on_them(tiny_data, tmp_path):
    seg, probs, expected, truth = _inputs(tiny_data, tmp_path)
    out = tmp_path / "pseudo"
    summary = pseudo_label(tiny_data, seg, probs, out, PseudoRule(min_confidence=0.9))
    assert summary.pseudo == expected and summary.test_images == len(expected) + 2
    data = load_train_data(out)
    train = read_train(tiny_data)
    assert data.pseudo == tuple(expected) and len(data.labels) == train["image"].nunique() + len(expected)
    assert data.labelled == list(pd.unique(train["image"]))
    assert (out / "train_images" / expected[0]).resolve() == (tiny_data / "test_images" / expected[0]).resolve()
    assert (out / "test_images").is_dir() and (out / "sample_submission.csv").exists() and (out / "pseudo.yaml").exists()
    # The pseudo-labels are the submission's masks, resized to the training images' size.
    wide, source = to_wide(read_train(out)), to_wide(truth)
    for c in CLASSES:
        mask = rle2mask(wide.at[expected[0], c], data.image_shape)
        assert mask.shape == (64, 96) and mask.any() == bool(source.at[expected[0], c])
    for config in (load_config("classifier", overrides=TINY), load_config("classifier", overrides={**TINY, "folds": 3})):
        splits = make_splits(config, data.labels, data.pseudo)
        assert all(set(expected) <= set(tr) and not set(expected) & set(va) for tr, va in splits)
    run = train_tiny(out, tmp_path / "run", folds=2)
    oof = pd.read_csv(run / "val_probs.csv")
    assert sorted(oof["image"]) == sorted(data.labelled)  # out-of-fold over the real labels only
    splits = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False).set_index("image")["fold"]
    assert (splits[expected] == "").all() and (splits[data.labelled] != "").all()


def test_bad_inputs_are_refused_and_nothing_is_written(tiny_data, tmp_path):
    seg, probs, _, _ = _inputs(tiny_data, tmp_path)
    out = tmp_path / "pseudo"
    pseudo_label(tiny_data, seg, probs, out)
    with pytest.raises(CloudpipeError, match="already exists; pass --overwrite"):
        pseudo_label(tiny_data, seg, probs, out)
    with pytest.raises(CloudpipeError, match=r"sub.csv: no test image of 6 meets the rule \(min_confidence 0.99"):
        pseudo_label(tiny_data, seg, probs, out, PseudoRule(min_confidence=0.99), overwrite=True)  # 0.95 is not sure enough
    pseudo_label(tiny_data, seg, probs, out, PseudoRule(min_confidence=0.9, min_area=1), overwrite=True)
    with pytest.raises(CloudpipeError, match="already pseudo-labelled"):
        pseudo_label(out, seg, probs, tmp_path / "again")
    short = tmp_path / "short_probs.csv"
    pd.read_csv(probs).iloc[1:].to_csv(short, index=False)
    with pytest.raises(CloudpipeError, match=r"short_probs.csv: lacks 1 image\(s\)"):
        pseudo_label(tiny_data, seg, short, tmp_path / "other")
    with pytest.raises(CloudpipeError, match="--seg wants the test submission predict wrote with this --data"):
        pseudo_label(tiny_data, tiny_data / "train.csv", probs, tmp_path / "other")  # masks of other images
    with pytest.raises(CloudpipeError, match="must lie outside the data folder"):
        pseudo_label(tiny_data, seg, probs, tiny_data / "inside")
    assert not (tmp_path / "other").exists() and not (tiny_data / "inside").exists()
    with pytest.raises(CloudpipeError, match="output folder holds an input"):  # replacing it would delete the submission
        pseudo_label(tiny_data, seg, probs, seg.parent, overwrite=True)
    assert seg.exists() and probs.exists()
    assert not list(tmp_path.glob(".*tmp*"))
    (out / PSEUDO_CSV).write_text("image,Fish,Flower,Gravel,Sugar\nnot_there.jpg,1,0,0,0\n")
    with pytest.raises(CloudpipeError, match="pseudo_labels.csv: names not_there.jpg, which is not a training image"):
        load_train_data(out)


def test_cli(tiny_data, tmp_path):
    seg, _, expected, _ = _inputs(tiny_data, tmp_path)
    result = cli("pseudo-label", "--data", tiny_data, "--seg", seg, "--out", tmp_path / "p", "--min-confidence", 0.9)
    assert result.exit_code == 0, result.output
    assert f"{len(expected)} of {len(expected) + 2} test images pseudo-labelled" in result.output
    bad = cli("pseudo-label", "--data", tiny_data, "--seg", seg, "--out", tmp_path / "p")
    assert bad.exit_code == 2 and "already exists" in bad.output and "Traceback" not in bad.output


def _hidden(folder):
    """The hidden leftovers beside outputs (staging folders, old folders, locks)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_overwrite_replaces_only_a_pseudo_labelled_folder_never_a_link_or_a_file(tiny_data, tmp_path):
    seg, probs, _, _ = _inputs(tiny_data, tmp_path)
    plain, link, precious = tmp_path / "ps_file", tmp_path / "ps_link", tmp_path / "home"
    plain.write_text("mine")
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    link.symlink_to(precious)
    for out, says in ((plain, "not a folder"), (link, "symbolic link"), (precious, "refusing to delete")):
        with pytest.raises(CloudpipeError, match=says):
            pseudo_label(tiny_data, seg, probs, out, overwrite=True)
    assert plain.read_text() == "mine" and link.is_symlink() and os.listdir(precious) == ["thesis.tex"]
    assert _hidden(tmp_path) == []


def test_two_pseudo_labels_started_together_never_replace_one_without_overwrite(tiny_data, tmp_path, monkeypatch):
    """The other command finishes between this one's start and its lock: the check under the lock sees it."""
    seg, probs, _, _ = _inputs(tiny_data, tmp_path)
    out = tmp_path / "pseudo"
    finished_meanwhile(monkeypatch, out, "pseudo-label", "train.csv")
    with pytest.raises(CloudpipeError, match="already exists; pass --overwrite"):
        pseudo_label(tiny_data, seg, probs, out)
    assert (out / "train.csv").read_text() == "the other's"


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_pseudo_label_killed_with_9_blocks_nothing(tiny_data, tmp_path, overwrite):
    """kill -9 while the folder is built, or (replacing one) once the old folder is moved aside and
    before the new one is in place: the next run works and removes what the killed one left."""
    seg, probs, _, _ = _inputs(tiny_data, tmp_path)
    out = tmp_path / "pseudo"
    if overwrite:
        pseudo_label(tiny_data, seg, probs, out)
    killer = textwrap.dedent(f"""
        import os, signal
        import yaml
        from cloudpipe.pipeline.pseudo import pseudo_label
        OUT, rename = {str(out)!r}, os.rename
        def kill(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        def rename_then_kill(source, target):  # the old folder moved aside, the new one not yet in place
            rename(source, target)
            if str(source) == OUT:
                kill()
        if {overwrite}:
            os.rename = rename_then_kill
        else:
            yaml.safe_dump = kill  # while the folder is built
        pseudo_label({str(tiny_data)!r}, {str(seg)!r}, {str(probs)!r}, OUT, overwrite={overwrite})
    """)
    done = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert _hidden(tmp_path), "the killed run left nothing to clean"
    pseudo_label(tiny_data, seg, probs, out, overwrite=overwrite)
    assert (out / "pseudo.yaml").is_file() and _hidden(tmp_path) == []


def test_a_steel_folder_gets_its_pseudo_labels_in_its_own_layout(tmp_path):
    """Under steel, the new train.csv is Severstal's present-only layout (train.csv's images and the
    pseudo-labelled ones, masks only), and the folder says its profile."""
    from cloudpipe.core.masks import resize_nearest
    from cloudpipe.core.profile import packaged, use_profile
    from cloudpipe.data.kaggle import to_layout
    from cloudpipe.data.synth import make_dataset

    steel = packaged("steel").model_copy(update={"image_size": (32, 200), "submission_size": (16, 100)})
    data, out = tmp_path / "steel", tmp_path / "pseudo"
    with use_profile(steel):
        make_dataset(data, train=6, test=3, seed=3, progress=False)
        truth = read_mask_csv(data / "test_truth.csv")
        to_layout(truth, steel.submission_csv).to_csv(tmp_path / "sub.csv", index=False)
        probs = presence(truth).astype(float) * 0.9 + 0.05
        probs.rename_axis("image").reset_index().to_csv(tmp_path / "sub_probs.csv", index=False)
        summary = pseudo_label(data, tmp_path / "sub.csv", tmp_path / "sub_probs.csv", out)
        train, source = load_train_data(out), load_train_data(data)
        wide = to_wide(truth)
    assert summary.pseudo == list(probs.index) and train.pseudo == tuple(probs.index)
    assert list(train.labels.index) == sorted([*source.labels.index, *probs.index])
    written = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == ["ImageId", "ClassId", "EncodedPixels"] and (written["EncodedPixels"] != "").all()
    assert (out / "profile.yaml").read_bytes() == (data / "profile.yaml").read_bytes()
    for image in probs.index:
        for c in steel.classes:  # steel's RLE order is clouds' (column)
            expected = resize_nearest(rle2mask(wide.at[image, c], (16, 100)), (32, 200))
            assert (rle2mask(train.rles.at[image, c], (32, 200)) == expected).all()
    assert train.labels.loc[list(probs.index)].to_numpy().sum() > 0  # not vacuous
