"""The README's command blocks, run as written, in order, on a small synthetic data folder.

Every ```` ```bash ```` block runs; a block whose info string says ``skip-test`` does not (the
installs; torchrun's lines, run by ``tests/test_cli.py``). The training commands get options
appended that make them tiny (click keeps an option's last value), and ``bundle`` gets
``--no-download``, so the lines themselves stay exactly what a user types on the Kaggle data.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd

from cloudpipe.core.competition import split_label
from cloudpipe.data.synth import make_dataset
from tests.conftest import cli

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_TRAINING = ["--arch", "tiny", "--weights", "none", "--epochs", "1", "--image-size", "32", "64", "--workers", "0",
                 "--device", "cpu", "--quiet"]
"""Appended to train-seg and train-classifier: a stand-in network, one epoch, random weights, CPU."""
APPENDED = {"train-seg": TINY_TRAINING, "train-classifier": TINY_TRAINING, "bundle": ["--no-download"]}
"""What the test appends to a command: tiny training; a bundle without downloads (the tests are offline)."""


def readme_blocks() -> list[tuple[str, str]]:
    """``(info string, text)`` of every bash block, in order."""
    return re.findall(r"^```(bash[^\n]*)\n(.*?)^```", README.read_text(), re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The command lines of a block: continuations joined, comments dropped, split as bash would."""
    joined = block.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def kaggle_like_data(root: Path) -> Path:
    """``root/data``: 30 train and 6 test synthetic images, the first train image renamed to
    ``0035239.jpg``, which the README's ``show`` line draws (a train image of both the Kaggle
    data and clouds350)."""
    data = root / "data"
    make_dataset(data, train=30, test=6, shape=(64, 96), seed=5, progress=False)
    train = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    first = split_label(train["Image_Label"][0])[0]
    (data / "train_images" / first).rename(data / "train_images" / "0035239.jpg")
    train["Image_Label"] = train["Image_Label"].str.replace(first, "0035239.jpg", regex=False)
    train.to_csv(data / "train.csv", index=False)
    return data


def test_every_bash_block_is_run_or_says_why_not():
    infos = [info for info, _ in readme_blocks()]
    assert infos.count("bash") >= 1 and set(infos) <= {"bash", "bash skip-test"}, infos
    skipped = [text for info, text in readme_blocks() if info != "bash"]
    assert all(line.startswith(("python -m venv", "torchrun ")) for text in skipped for line in text.splitlines())


def test_the_readmes_command_blocks_run_as_written_in_order(tmp_path, monkeypatch):
    kaggle_like_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = []
    for info, block in readme_blocks():
        if info != "bash":
            continue
        for words in commands(block):
            assert words[0] == "cloudpipe", words
            args = words[1:] + APPENDED.get(words[1], [])
            result = cli(*args)
            assert result.exit_code == 0, (" ".join(words), result.output[-3000:])
            ran.append(words[1])
    assert {"train-seg", "predict-seg", "tune-seg", "apply-seg", "tune-threshold", "predict", "show", "evaluate"} <= set(ran)
    for written in ("submissions/submission.csv", "submissions/ensemble.csv", "ens/thresholds.json", "overlay.png",
                    "kaggle_bundle/submit.ipynb"):
        assert (tmp_path / written).is_file(), written
