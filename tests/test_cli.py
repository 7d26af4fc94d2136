import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.core.rle import rle2mask
from tests.conftest import CLASSES, SUBMISSION_SHAPE, cli

run = cli


def assert_one_line_error(result, *needles: str) -> str:
    """Exit status 2, nothing on stdout, one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def parse_table(stdout: str) -> dict[str, float]:
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["class", "dice"]
    assert lines[-1].startswith("scored ")
    return {name: float(value) for name, value in (line.split() for line in lines[1:-1])}


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


# --- help -----------------------------------------------------------------------------------------


def test_main_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0, result.output
    assert {"synth", "evaluate"} <= set(main.commands)
    for name in main.commands:
        assert name in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(flag):
    for name, command in main.commands.items():
        result = run(name, flag)
        assert result.exit_code == 0, (name, result.output, result.exception)
        first = result.stdout.splitlines()[0]
        assert first.startswith("Usage: ") and f" {name} " in f"{first} ", (name, first)
        assert "Options:" in result.stdout, name
        if command.help:
            assert command.help.split()[0] in result.stdout, name


def _options():
    """``(command, option name, click parameter, context)`` of every option of every command."""
    for name, command in main.commands.items():
        ctx = click.Context(command, info_name=name, parent=click.Context(main, info_name="cloudpipe"))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in (*param.opts, *param.secondary_opts):
                    yield name, opt, param, ctx


def _meaning(param: click.Option, ctx: click.Context) -> tuple:
    """What an option takes, as its help shows it: its metavar (FILE, DIRECTORY, H W, ...), the
    choices or range it allows, and whether it is a flag."""
    kind = param.type
    return (param.make_metavar(ctx), tuple(getattr(kind, "choices", ()) or ()), getattr(kind, "min", None),
            getattr(kind, "max", None), param.is_flag, param.nargs)


def test_one_option_name_has_one_meaning_across_every_command():
    """An option spelled the same takes the same kind of value in every command (``--seg`` a CSV,
    ``--run`` a run folder, ``--seed`` the same range, ...)."""
    meanings: dict[str, dict[tuple, list[str]]] = {}
    for command, opt, param, ctx in _options():
        meanings.setdefault(opt, {}).setdefault(_meaning(param, ctx), []).append(command)
    twice = {opt: found for opt, found in meanings.items() if len(found) > 1}
    assert not twice, twice
    for opt, metavar in (("--seg", "FILE"), ("--run", "DIRECTORY"), ("--data", "DIRECTORY"), ("--thresholds", "FILE|T")):
        assert [m[0] for m in meanings[opt]] == [metavar], (opt, meanings[opt])


def test_no_two_option_names_differ_by_a_plural_s():
    """``--weight`` beside ``--weights`` or ``--threshold`` beside ``--thresholds`` read as one option;
    ``--fold I`` of ``--folds K`` (one command, one concept) is the one pair allowed."""
    names = {opt for _, opt, _, _ in _options()}
    pairs = sorted(f"{n} / {n}s" for n in names if f"{n}s" in names)
    assert pairs == ["--fold / --folds"], pairs


def test_every_path_is_an_option_and_outputs_are_named_out():
    """No positional arguments (``synth --out``, ``runs --root`` as ``demo --out``)."""
    positional = [(name, p.name) for name, c in main.commands.items() for p in c.params if isinstance(p, click.Argument)]
    assert positional == []


def test_a_shown_default_reads_as_it_is_typed():
    """``[default: 350 525]``, not click's ``350, 525``, for every option taking several values."""
    for command, opt, param, ctx in _options():
        record = param.get_help_record(ctx)
        shown = record[1] if record else ""
        assert not re.search(r"default: \(?\d+, \d+", shown), (command, opt, shown)
        if param.nargs > 1 and param.default is not None:
            assert f"[default: {' '.join(map(str, param.default))}]" in shown, (command, opt, shown)


def test_help_names_only_options_the_command_has():
    """A placeholder in help (``RUN/thresholds.json``, ``DATA's image folders``) is one of the
    command's own options (``--run``, ``--data``), never a ``DIR`` it does not take."""
    for name, command in main.commands.items():
        own = {opt.lstrip("-").upper() for p in command.params for opt in getattr(p, "opts", [])}
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            for placeholder in re.findall(r"\b([A-Z][A-Z_]+)(?=/|'s\b)", text):
                assert placeholder in own, (name, placeholder, text)


@pytest.mark.parametrize("command", ["train-seg", "train-classifier"])
def test_val_fraction_has_an_option_of_its_own_on_both_stages(command):
    result = run(command, "--help")
    assert "--val-fraction" in result.stdout and "give both stages the same value" in " ".join(result.stdout.split())
    refused = run(command, "--data", ".", "--out", "x", "--val-fraction", "1")
    assert refused.exit_code == 2 and "--val-fraction" in refused.stderr and "1" in refused.stderr


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "cloudpipe", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout and "synth" in result.stdout


# --- synth ----------------------------------------------------------------------------------------


def test_synth(tmp_path):
    out = tmp_path / "data"
    args = ["synth", "--out", out, "--train", "3", "--test", "2", "--height", "32", "--width", "48", "--seed", "1"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert f"wrote 3 train and 2 test images (32x48) to {out}" in result.stdout
    assert len(list((out / "train_images").glob("*.jpg"))) == 3
    assert len(list((out / "test_images").glob("*.jpg"))) == 2
    assert len(read_rows(out / "train.csv")) == 1 + 3 * 4
    assert len(read_rows(out / "sample_submission.csv")) == 1 + 2 * 4
    assert len(read_rows(out / "test_truth.csv")) == 1 + 2 * 4
    before = (out / "train.csv").read_bytes()

    assert_one_line_error(run(*args), str(out), "--overwrite")
    assert (out / "train.csv").read_bytes() == before

    result = run(*args[:-1], "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "train.csv").read_bytes() != before


def test_synth_bad_arguments(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run("synth", "--out", tmp_path / "afile", "--train", "2", "--test", "1"), "afile")
    assert_one_line_error(run("synth", "--out", tmp_path / "d", "--seed", "-1"), "--seed")
    assert not (tmp_path / "d").exists()
    # Range checks are click's own (usage error, exit 2).
    assert run("synth", "--out", tmp_path / "d", "--train", "1").exit_code == 2
    assert run("synth", "--out", tmp_path / "d", "--height", "8").exit_code == 2


# --- evaluate -------------------------------------------------------------------------------------


def evaluate(truth: Path, pred: Path, *extra: str):
    return run("evaluate", "--truth", truth, "--pred", pred, *extra)


SMALL = ("--truth-shape", "350", "525")  # test_truth.csv is written at the submission size


def test_evaluate_truth_against_itself(tiny_data):
    truth = tiny_data / "test_truth.csv"
    result = evaluate(truth, truth, *SMALL)
    assert result.exit_code == 0, result.output
    table = parse_table(result.stdout)
    assert list(table) == [*CLASSES, "mean"]
    assert all(v == 1.0 for v in table.values())


def test_evaluate_train_at_image_size(tiny_data):
    train = tiny_data / "train.csv"
    result = evaluate(train, train, "--truth-shape", "64", "96", "--pred-shape", "64", "96")
    assert result.exit_code == 0, result.output
    assert parse_table(result.stdout)["mean"] == 1.0


def test_evaluate_sample_submission(tiny_data):
    truth = tiny_data / "test_truth.csv"
    result = evaluate(truth, tiny_data / "sample_submission.csv", *SMALL)
    assert result.exit_code == 0, result.output
    table = parse_table(result.stdout)
    # By hand: a "1 1" prediction is the single pixel 1. Dice is 0 where the class is absent,
    # and 2*[pixel 1 in truth] / (1 + truth area) where it is present.
    dice = {c: [] for c in CLASSES}
    for label, rle in read_rows(truth)[1:]:
        mask = rle2mask(rle, SUBMISSION_SHAPE)
        dice[label.rsplit("_", 1)[1]].append(2 * int(mask[0, 0]) / (1 + mask.sum()))
    for c in CLASSES:
        assert table[c] == pytest.approx(np.mean(dice[c]), abs=5e-5)
    assert table["mean"] == pytest.approx(np.mean(list(dice.values())), abs=5e-5)
    assert table["mean"] < 1


@pytest.fixture
def truth_copy(tiny_data, tmp_path) -> tuple[Path, list[list[str]]]:
    path = tmp_path / "truth.csv"
    shutil.copy(tiny_data / "test_truth.csv", path)
    return path, read_rows(path)


def test_evaluate_missing_column(truth_copy, tmp_path):
    truth, rows = truth_copy
    pred = write_rows(tmp_path / "pred.csv", [["Image_Label", "Pixels"], *rows[1:]])
    assert_one_line_error(evaluate(truth, pred, *SMALL), str(pred), "line 1", "EncodedPixels")


def test_evaluate_duplicate_row(truth_copy, tmp_path):
    truth, rows = truth_copy
    rows[6] = [rows[5][0], ""]  # line 7 repeats line 6's Image_Label
    pred = write_rows(tmp_path / "pred.csv", rows)
    assert_one_line_error(evaluate(truth, pred, *SMALL), str(pred), "line 7", "duplicate", rows[5][0])


@pytest.mark.parametrize("rle", ["1 x", "1 2 3", "0 5", "10 5 3 1", "183750 2"])
def test_evaluate_bad_rle(truth_copy, tmp_path, rle):
    truth, rows = truth_copy
    rows[9][1] = rle  # line 10
    pred = write_rows(tmp_path / "pred.csv", rows)
    assert_one_line_error(evaluate(truth, pred, *SMALL), str(pred), "line 10", rows[9][0])


def test_evaluate_bad_truth_rle(truth_copy, tmp_path):
    truth, rows = truth_copy
    rows[3][1] = "5 -1"
    write_rows(truth, rows)
    assert_one_line_error(evaluate(truth, truth, *SMALL), str(truth), "line 4")


def test_evaluate_image_sets_differ(truth_copy, tmp_path):
    truth, rows = truth_copy
    image = rows[1][0].rsplit("_", 1)[0]
    renamed = [[label.replace(image, "fffffff.jpg"), rle] for label, rle in rows[1:]]
    pred = write_rows(tmp_path / "pred.csv", [rows[0], *renamed])
    message = assert_one_line_error(evaluate(truth, pred, *SMALL), str(pred), "has 1 extra image(s)", "fffffff.jpg")
    assert "lacks" not in message
    # A prediction of some of the truth's images (a run's validation images) is scored on those.
    dropped = write_rows(tmp_path / "fewer.csv", [rows[0], *rows[5:]])
    result = evaluate(truth, dropped, *SMALL)
    assert result.exit_code == 0, result.output
    assert parse_table(result.stdout)["mean"] == 1.0
    n = (len(rows) - 1) // 4
    assert result.stdout.strip().splitlines()[-1] == f"scored {n - 1} of {n} truth images"


@pytest.mark.parametrize("content", ["", "Image_Label,EncodedPixels\n"])
def test_evaluate_empty_files(truth_copy, tmp_path, content):
    truth, _ = truth_copy
    pred = tmp_path / "pred.csv"
    pred.write_text(content)
    assert_one_line_error(evaluate(truth, pred, *SMALL), str(pred))


def test_training_help_shows_the_yaml_defaults():
    classifier = CliRunner().invoke(main, ["train-classifier", "--help"]).output
    assert "[default: 30, configs/classifier.yaml]" in classifier and "[default: 512 768" in classifier
    seg = CliRunner().invoke(main, ["train-seg", "--help"]).output
    assert "[default: 20, configs/seg.yaml]" in seg
    for text in (classifier, seg):
        assert "--weights, --encoder-weights" in text  # one name for both stages, the old one still works


def test_evaluate_takes_mask_shape_like_the_other_commands(tmp_path):
    truth = tmp_path / "t.csv"
    truth.write_text("Image_Label,EncodedPixels\n" + "".join(f"a.jpg_{c},1 2\n" for c in CLASSES))
    for flag in ("--mask-shape", "--pred-shape"):
        result = CliRunner().invoke(main, ["evaluate", "--truth", str(truth), "--pred", str(truth), "--truth-shape", "4", "6",
                                           flag, "4", "6"])
        assert result.exit_code == 0, result.output
        assert "1.0000" in result.output


# --- the README's torchrun commands -----------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_torchrun_commands() -> list[str]:
    """The ``torchrun`` lines of the README's bash blocks."""
    import re

    blocks = re.findall(r"```bash[^\n]*\n(.*?)```", README.read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("torchrun ")]


@pytest.mark.slow
def test_the_readmes_torchrun_commands_run_as_written(tiny_data, tiny_classifier_run, tmp_path):
    import os
    import re
    import shlex

    commands = readme_torchrun_commands()
    assert len(commands) >= 2
    for mention in re.findall(r"`(torchrun [^`]*)`", README.read_text()):  # the prose gives the same form
        assert mention.startswith("torchrun --standalone --nproc-per-node") and " -m -- cloudpipe " in mention, mention
    shutil.copytree(tiny_data, tmp_path / "data")
    shutil.copytree(tiny_classifier_run, tmp_path / "runs" / "classifier")
    seg = tmp_path / "runs" / "seg"
    setup = [["train-seg", "--data", tmp_path / "data", "--out", seg, "--epochs", 1, "--image-size", 32, 64, "--arch",
              "tiny", "--weights", "none", "--workers", 0, "--device", "cpu", "--quiet"],
             ["predict-seg", "--run", seg, "--data", tmp_path / "data", "--split", "val", "--workers", 0, "--quiet"],
             ["predict-seg", "--run", seg, "--data", tmp_path / "data", "--split", "test", "--workers", 0, "--quiet"]]
    for args in setup:
        result = run(*args)
        assert result.exit_code == 0, result.output
    repo = str(README.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        words = shlex.split(command)
        assert (tmp_path / words[words.index("--out") + 1]).is_file(), command


def test_every_shape_option_takes_two_positive_numbers():
    """--mask-shape, --pred-shape, --truth-shape of every command: 0 or a negative size is refused
    by the option itself (they used to crash, or pass and exit 0 with nothing checked)."""
    shapes = [(name, param.opts[0]) for name, command in main.commands.items() for param in command.params
              if param.metavar == "H W" and param.name != "image_size"]
    assert {opt for _, opt in shapes} == {"--mask-shape", "--truth-shape"} and len(shapes) >= 7
    for name, opt in shapes:
        for bad in ((0, 0), (-350, 525)):
            result = cli(name, opt, *bad)
            assert result.exit_code == 2, (name, opt, result.output)
            assert f"{min(bad)} is not in the range x>=1" in result.output and len(result.output.strip().splitlines()) == 1
    assert cli("evaluate", "--pred-shape", 0, 0).exit_code == 2


@pytest.mark.parametrize("command, option, value", [
    ("predict", "--thresholds", "nan"), ("predict", "--ensemble-weight", "inf"), ("tune-threshold", "--area-threshold", "nan"),
    ("tune-seg", "--ensemble-weight", "nan"), ("train-seg", "--grad-clip", "inf"), ("train-classifier", "--ema", "nan"),
])
def test_no_float_option_takes_nan_or_infinity(command, option, value):
    """NaN passes click's range checks (every comparison with it is false), infinity any open range."""
    result = cli(command, option, value)
    assert result.exit_code == 2 and f"'{value}' is not a finite number" in result.output, result.output


def test_a_shape_of_more_pixels_than_an_image_may_have_is_refused():
    result = cli("evaluate", "--pred-shape", 100000, 100000)
    assert result.exit_code == 2 and "100000 x 100000 is more than 47,040,000 pixels" in result.output, result.output
