"""The README's command blocks, run as written, in order, on a small synthetic data folder.

Every ```` ```bash ```` block runs; a block whose info string says ``skip-test`` does not (the
installs; torchrun's lines, run by ``tests/test_cli.py``). The training commands get options
appended that make them tiny (click keeps an option's last value), ``bundle`` gets
``--no-download`` and ``subset`` smaller counts, so the lines themselves stay exactly what a user
types on the Kaggle data (the quick start's on ``clouds350``, here a synthetic stand-in in its layout).
"""

from __future__ import annotations

import csv
import hashlib
import re
import shlex
from pathlib import Path

import pandas as pd

from cloudpipe.core.profile import split_label
from cloudpipe.data.synth import make_dataset
from tests.conftest import SUBMISSION_SHAPE, cli

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_TRAINING = ["--arch", "tiny", "--weights", "none", "--epochs", "1", "--image-size", "32", "64", "--workers", "0",
                 "--device", "cpu", "--quiet"]
"""Appended to train-seg and train-classifier: a stand-in network, one epoch, random weights, CPU."""
APPENDED = {"train-seg": TINY_TRAINING, "train-classifier": TINY_TRAINING, "bundle": ["--no-download"],
            "subset": ["--train", "20", "--test", "5"], "synth": ["--train", "24", "--test", "6", "--height", "48", "--width", "80"]}
"""What the test appends to a command: tiny training; a bundle without downloads (the tests are offline); a
subset of the small stand-in for clouds350; fewer, smaller synthetic images (48 x 80: still not square)."""


def readme_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """``(info string, text)`` of every bash block (of ``text``, default the whole README), in order."""
    return re.findall(r"^```(bash[^\n]*)\n(.*?)^```", README.read_text() if text is None else text, re.S | re.M)


def write_readme_files(root: Path) -> None:
    """The README's file blocks (info string ``yaml NAME.yaml``, e.g. a profile) written into ``root``, as a
    user saves them."""
    for name, text in re.findall(r"^```yaml (\S+\.yaml)\n(.*?)^```", README.read_text(), re.S | re.M):
        (root / name).write_text(text)


def run_blocks(blocks: list[tuple[str, str]]) -> list[str]:
    """Run the ``bash`` blocks' commands in the current folder (tiny, :data:`APPENDED`), each must succeed;
    the commands run."""
    ran = []
    for info, block in blocks:
        if info != "bash":
            continue
        for words in commands(block):
            assert words[0] == "cloudpipe", words
            args = words[1:] + APPENDED.get(words[1], [])
            result = cli(*args)
            assert result.exit_code == 0, (" ".join(words), result.output[-3000:])
            ran.append(words[1])
    return ran


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


def clouds350_like_data(root: Path) -> Path:
    """``root/clouds350``: a synthetic stand-in in clouds350's layout (images, ``train.csv`` and
    ``test_truth.csv`` masks at 350 x 525), 30 train and 6 test images, for the quick start."""
    make_dataset(root / "clouds350", train=30, test=6, shape=SUBMISSION_SHAPE, seed=6, progress=False)
    return root / "clouds350"


GOLDEN = Path(__file__).parent / "golden" / "readme_clouds.sha256"
"""sha256 of every file the README's blocks wrote (data, runs, stores, submissions, the report, the bundle's
notebook) that comes out the same in every run, as cloudpipe wrote them before profiles (commit b762c17): files
that hold a time or a temporary path (``last.pt``, ``metrics.csv``, JSON files naming folders, TensorBoard
events, the wheel) are not listed."""


def assert_as_before(root: Path) -> None:
    """Every file of :data:`GOLDEN` under ``root`` is byte-identical to what it was: the default profile,
    clouds, changes no output."""
    changed = [name for digest, name in (line.split("  ", 1) for line in GOLDEN.read_text().splitlines())
               if hashlib.sha256((root / name).read_bytes()).hexdigest() != digest]
    assert not changed, f"{len(changed)} output(s) differ from before profiles, e.g. {changed[:5]}"


def test_every_bash_block_is_run_or_says_why_not():
    infos = [info for info, _ in readme_blocks()]
    assert infos.count("bash") >= 1 and set(infos) <= {"bash", "bash skip-test"}, infos
    skipped = [text for info, text in readme_blocks() if info != "bash"]
    assert all(line.startswith(("test -x .venv/bin/cloudpipe || ", "torchrun ")) for text in skipped for line in text.splitlines())


def test_the_readme_starts_with_the_two_set_up_commands_and_ci_runs_the_second():
    """The first lines: one installs (once) and runs the demo, one installs (once) and runs the tests;
    .ci/run runs that very test line, on a fresh .venv."""
    demo, tests = readme_blocks()[0][1].splitlines()
    install = "test -x .venv/bin/cloudpipe || { python -m venv .venv && .venv/bin/pip install -e '.[dev]'; } && "
    assert (demo, tests) == (install + ".venv/bin/cloudpipe demo", install + ".venv/bin/python -m pytest")
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert tests in ci and ci.index("rm -rf .venv") < ci.index(tests)


def test_the_readmes_command_blocks_run_as_written_in_order(tmp_path, monkeypatch):
    kaggle_like_data(tmp_path)
    clouds350_like_data(tmp_path)
    write_readme_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = run_blocks(readme_blocks())
    assert {"subset", "train-seg", "predict-seg", "tune-seg", "apply-seg", "tune-threshold", "predict", "report", "show",
            "evaluate"} <= set(ran)
    assert_as_before(tmp_path)
    tiles = read_kaggle_csv(tmp_path / "submissions" / "tiles.csv", ("ImageId", "ClassId", "EncodedPixels"), ("water", "land"),
                            (192, 256))
    assert list(tiles) == [(image, c) for image in sample_images(tmp_path / "tiles", "ImageId") for c in ("water", "land")]
    for written in ("submissions/submission.csv", "submissions/ensemble.csv", "ens/thresholds.json", "overlay.png",
                    "kaggle_bundle/submit.ipynb", "quick/submission.csv", "quick/report.html"):
        assert (tmp_path / written).is_file(), written


def read_kaggle_csv(path: Path, header: tuple[str, ...], classes: tuple[str, ...], shape: tuple[int, int]) -> dict:
    """A submission read as Kaggle's checker would, with the csv module alone (not cloudpipe's reader):
    exactly ``header`` (columns ``ImageId``, ``ClassId``, ``EncodedPixels`` in some order), each row's class
    one of ``classes``, each RLE an even count of positive integers whose runs are sorted, apart and inside
    ``shape``, each (image, class) once. Returns ``{(image, class): rle}`` in row order."""
    with open(path, newline="") as file:
        assert tuple(next(csv.reader(file))) == header
        file.seek(0)
        rows = list(csv.DictReader(file))
    pairs = {}
    for row in rows:
        image, cls, rle = row["ImageId"], row["ClassId"], row["EncodedPixels"]
        assert cls in classes and (image, cls) not in pairs, row
        numbers = [int(n) for n in rle.split(" ")] if rle else []
        starts, lengths = numbers[0::2], numbers[1::2]
        assert len(numbers) % 2 == 0 and all(n > 0 for n in numbers), row
        assert all(a + n < b for a, n, b in zip(starts, lengths, starts[1:])), row
        assert not starts or starts[-1] + lengths[-1] - 1 <= shape[0] * shape[1], row
        pairs[(image, cls)] = rle
    return pairs


def sample_images(data: Path, column: str) -> list[str]:
    """The test images of a data folder's sample_submission.csv, in its order (csv module alone)."""
    with open(data / "sample_submission.csv", newline="") as file:
        return list(dict.fromkeys(row[column] for row in csv.DictReader(file)))


def test_the_real_workflow_runs_unchanged_on_steel_data_and_writes_severstals_layout(tmp_path, monkeypatch):
    """The README's workflow on the Kaggle data, with no flag beyond --data, on a data folder of
    ``synth --profile steel`` (images 64 x 400, the profile's 256 x 1600 masks in the submission)."""
    synth = cli("synth", "--profile", "steel", "--out", tmp_path / "data", "--train", "20", "--test", "3", "--height", "64",
                "--width", "400", "--seed", "5")
    assert synth.exit_code == 0, synth.output
    first = sorted((tmp_path / "data" / "train_images").iterdir())[0]
    first.rename(first.with_name("0035239.jpg"))  # the image the README's show line draws
    train = tmp_path / "data" / "train.csv"
    train.write_text(train.read_text().replace(first.name, "0035239.jpg"))
    monkeypatch.chdir(tmp_path)
    section = README.read_text().split("## The real workflow", 1)[1].split("\n## ", 1)[0]
    assert {"train-seg", "predict-seg", "tune-threshold", "predict", "bundle", "evaluate"} <= set(run_blocks(readme_blocks(section)))
    steel = ("ImageId", "EncodedPixels", "ClassId")
    for name in ("submission.csv", "ensemble.csv"):
        pairs = read_kaggle_csv(tmp_path / "submissions" / name, steel, ("1", "2", "3", "4"), (256, 1600))
        assert list(pairs) == [(image, c) for image in sample_images(tmp_path / "data", "ImageId") for c in "1234"]
    notebook = (tmp_path / "kaggle_bundle" / "submit.ipynb").read_text()
    assert "severstal-steel-defect-detection" in notebook and "'--profile'" in notebook
