"""``cloudpipe bundle``: a folder to upload to Kaggle as a dataset, for a notebook that runs offline.

Kaggle's code competitions run notebooks with the internet off, and segmentation-models-pytorch
is not on their image. The bundle holds what the notebook needs beyond that image:

- ``wheels/``: cloudpipe's own wheel (built from its source) and those of
  :data:`KAGGLE_EXTRAS` (``pip download`` for Kaggle's platform), or of a prepared folder;
- ``runs/seg``, ``runs/classifier``: each run's :data:`RUN_FILES` and finished checkpoints:
  what predicting needs and what the tuned files' run fingerprints are computed from;
- ``submit.ipynb``: installs the wheels with ``pip --no-index``, runs ``predict-seg --split
  test`` and ``predict``, and writes ``/kaggle/working/submission.csv``;
- ``bundle.json``: what is in it (the notebook finds the bundle by this file).

Before anything is written, every file it packs is checked as the commands that will read it
on Kaggle check it, and must be a regular file of the run's own (never a link, whose target
may lie anywhere, nor a hard-linked or special file). The folder is built beside ``--out``
and swapped in by the runner (:meth:`~cloudpipe.engine.runner.Runner.write_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cloudpipe import __version__
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.runfolder import (
    CONFIG_YAML,
    POSTPROCESS_JSON,
    PROFILE_YAML,
    SPLITS_CSV,
    THRESHOLDS_JSON,
    VAL_PROBS_CSV,
    read_json,
    run_inputs,
    trained_checkpoints,
)
from cloudpipe.engine.config import Task, load_run_config
from cloudpipe.engine.runner import Plan, Runner
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.gate import SEGMENTATION_KEY, load_gate
from cloudpipe.pipeline.seg_masks import test_postprocess
from cloudpipe.pipeline.sources import PREDICT_SEG, produced_by, registry, source_inputs

KAGGLE_EXTRAS = ("segmentation-models-pytorch>=0.5,<0.7", "simplejpeg>=1.7", "albumentations==2.0.8", "albucore==0.0.24",
                 "stringzilla", "simsimd")
"""What cloudpipe needs that Kaggle's Python image lacks, or holds at another version, with the
dependencies of these that it lacks (albumentations 2.0.8 pins albucore 0.0.24, which needs
stringzilla and simsimd). Installed with ``--no-deps``: everything else is assumed on the image
(torch, torchvision, timm, huggingface-hub, safetensors, opencv, numpy, scipy, pydantic, pandas,
click, pyyaml, tqdm, matplotlib, jinja2, scikit-learn, tensorboard). ``--require`` adds more."""
KAGGLE_PLATFORM = ("manylinux2014_x86_64", "3.11")
"""The platform and Python version of Kaggle's image, for ``pip download``."""
BUNDLE_JSON = "bundle.json"
NOTEBOOK = "submit.ipynb"
RUN_FILES = (CONFIG_YAML, PROFILE_YAML, SPLITS_CSV, VAL_PROBS_CSV, POSTPROCESS_JSON, THRESHOLDS_JSON)


@dataclass
class Bundle:
    """What :func:`make_bundle` wrote."""

    out: Path
    wheels: list[str]
    files: list[str]
    missing: list[str] = field(default_factory=list)
    """Requirements of :data:`KAGGLE_EXTRAS` (and ``--require``) with no wheel in the bundle."""


def _run_files(run_dir: Path, task: Task) -> list[Path]:
    """The files of a ``task`` run the bundle carries, relative to it, each checked to be the
    run's own (:func:`_own_file`) before anything reads it; a run without a finished checkpoint
    is refused."""
    files = [Path(name) for name in RUN_FILES if os.path.lexists(run_dir / name)]
    for member in files:
        _own_file(run_dir, member)
    load_run_config(run_dir, task)
    checkpoints = [p.relative_to(run_dir) for p in trained_checkpoints(run_dir)]
    for member in checkpoints:
        _own_file(run_dir, member)
    return files + checkpoints


def _own_file(root: Path, member: Path) -> os.stat_result:
    """Check that ``root / member`` (a run's file, a wheel) is a regular file of ``root``'s own: no
    link on the way, and not hard-linked or special (else one line naming it and what it is)."""
    path = Path(root)
    for part in member.parts:
        path = path / part
        try:
            found = os.lstat(path)
        except OSError as err:
            raise CloudpipeError(f"cannot read ({err.strerror})", path=path) from None
        if stat.S_ISLNK(found.st_mode):
            raise CloudpipeError("is a symbolic link: a bundle packs its inputs' own regular files only, never what a "
                                 "link points to; replace the link with a copy of the file", path=path)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        raise CloudpipeError("is a hard link or a special file: a bundle packs its inputs' own regular files only; "
                             "replace it with a copy of the file", path=path)
    return found


def _copy_own(root: Path, member: Path, target: Path) -> None:
    """Copy ``root / member`` (checked by :func:`_own_file`) to ``target``, never through a link
    put in its place meanwhile."""
    checked = _own_file(root, member)
    fd = os.open(Path(root) / member, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as source:
        opened = os.fstat(source.fileno())
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            raise CloudpipeError("changed while the bundle was built; run bundle again", path=Path(root) / member)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as copy:
            shutil.copyfileobj(source, copy)


def _check_runs(seg_run: Path, classifier_run: Path) -> set[str]:
    """Check the runs' files as the notebook's commands will read them on Kaggle (the first
    refused raises): the checkpoints, the seg run's ``seg_postprocess.json`` and the
    classifier's ``thresholds.json``, each tuned for exactly these runs; returns the names of
    the inputs beyond the classifier that the gate reads."""
    import torch

    from cloudpipe.engine.infer import load_run

    for run, task in ((seg_run, "segmentation"), (classifier_run, "classifier")):
        load_run(run, task, torch.device("cpu"), channels_last=False)
    seg, classifier = Ensemble.of(seg_run), Ensemble.of(classifier_run)
    if not (seg_run / POSTPROCESS_JSON).is_file():
        raise CloudpipeError(f"no {POSTPROCESS_JSON}: run predict-seg --split val on the run first", path=seg_run)
    test_postprocess(seg, None)
    path = classifier_run / THRESHOLDS_JSON
    if not path.is_file():
        raise CloudpipeError(f"no {THRESHOLDS_JSON}: run tune-threshold on the classifier first", path=classifier_run)
    spec = load_gate(path, classifier)
    known = registry()
    gates = {known[s].input.name for s in spec.sources if known[s].input is not None}
    recorded = read_json(path, "thresholds").get(SEGMENTATION_KEY)
    records_runs = any(source_inputs()[name].runs is not None for name in gates)
    if records_runs and recorded is not None:  # predict on Kaggle checks that input's runs: the bundled seg run
        seg.check_tuned_for(recorded, path, "thresholds' segmentation runs (against the bundled seg run)")
    return gates


def _build_wheel(wheels: Path, scratch: Path) -> None:
    """cloudpipe's wheel into ``wheels``, built (offline, with this Python's setuptools) from a
    copy of the source it was installed from in ``scratch``: the source tree gets no build folders."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise CloudpipeError("cloudpipe's source (pyproject.toml) is not beside the package: pass --wheels-from a folder "
                             "holding its wheel")
    scratch.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, scratch / name)
    shutil.copytree(root / "cloudpipe", scratch / "cloudpipe", ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(wheels), str(scratch))
    shutil.rmtree(scratch)


def _pip(*args: str) -> None:
    """Run pip in this Python; a failure is one line with pip's last line."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise CloudpipeError(f"pip {args[0]} failed: {last}")


def _wheel_name(spec: str) -> str:
    """The normalised distribution name a wheel file of ``spec`` starts with."""
    name = spec
    for mark in "<>=!~;[ ":
        name = name.split(mark)[0]
    return name.strip().lower().replace("-", "_").replace(".", "_")


def notebook(gates: set[str]) -> dict:
    """The bundle's notebook (nbformat 4); paths from ``CLOUDPIPE_DATA`` / ``CLOUDPIPE_WORKING``
    when set (Kaggle's otherwise)."""
    seg_out = [] if any(i.producer.with_store for i in produced_by(PREDICT_SEG) if i.name in gates) else ["--no-keep-store"]
    test_seg = Path("test_seg.csv")
    gate_args = [f"{i.option!r}, str(WORK / {i.files_beside(test_seg)[0].name!r})" for name, i in source_inputs().items() if name in gates]
    profile = active()
    data = profile.kaggle_data or f"/kaggle/input/{profile.name}"
    # the Kaggle data folder has no profile.yaml: a profile other than the default is the runs' own file
    profile_args = "" if profile.is_default else f"'--profile', BUNDLE / 'runs' / 'seg' / {PROFILE_YAML!r}, "
    cells = [
        ("markdown", "# cloudpipe: the submission, offline\n\nAdd this dataset and the competition's data to the "
                     "notebook; run all. Installs cloudpipe from the bundle's wheels (no internet), draws the test "
                     "masks with the segmentation run, gates them with the presence classifier and its tuned "
                     "thresholds, and writes `/kaggle/working/submission.csv`."),
        ("code", "import glob, os, subprocess, sys\nfrom pathlib import Path\n\n"
                 f"BUNDLE = Path(glob.glob('/kaggle/input/*/{BUNDLE_JSON}')[0]).parent if 'CLOUDPIPE_BUNDLE' not in os.environ "
                 "else Path(os.environ['CLOUDPIPE_BUNDLE'])\n"
                 f"DATA = os.environ.get('CLOUDPIPE_DATA', '{data}')\n"
                 "WORK = Path(os.environ.get('CLOUDPIPE_WORKING', '/kaggle/working'))\n"
                 "wheels = sorted(str(p) for p in (BUNDLE / 'wheels').glob('*.whl'))\n"
                 "subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--quiet', *wheels], "
                 "check=True)"),
        ("code", "def cloudpipe(*args):\n    subprocess.run([sys.executable, '-m', 'cloudpipe', *map(str, args)], check=True)\n\n"
                 "cloudpipe('predict-seg', '--run', BUNDLE / 'runs' / 'seg', '--data', DATA, '--split', 'test', "
                 f"{profile_args}"
                 f"'--out', WORK / 'test_seg.csv', {', '.join(repr(a) for a in seg_out) + ', ' if seg_out else ''}'--quiet')"),
        ("code", "cloudpipe('predict', '--seg', WORK / 'test_seg.csv', '--run', BUNDLE / 'runs' / 'classifier', "
                 f"'--data', DATA, {profile_args}'--out', WORK / 'submission.csv', {''.join(a + ', ' for a in gate_args)}'--quiet')"),
    ]

    def cell(kind: str, text: str) -> dict:
        lines = text.splitlines(keepends=True)
        if kind == "markdown":
            return {"cell_type": "markdown", "metadata": {}, "source": lines}
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": lines}

    return {"cells": [cell(k, t) for k, t in cells], "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}}


def make_bundle(seg_run: Path, classifier_run: Path, out: Path, *, wheels_from: Path | None = None,
                download: bool = True, require: tuple[str, ...] = (), overwrite: bool = False) -> Bundle:
    """Write the bundle folder ``out`` (see the module's text); ``overwrite`` replaces only a
    folder ``bundle`` made. ``wheels_from``: a folder of wheels to copy in (``cloudpipe-*.whl``
    among them: no build); ``download``: ``pip download`` :data:`KAGGLE_EXTRAS` and ``require``
    (needs the network). A run file refused (:func:`_run_files`, :func:`_check_runs`) stops it
    before anything is written."""
    seg_run, classifier_run, out = Path(seg_run), Path(classifier_run), Path(out)

    def declare() -> tuple[Plan, tuple[dict[str, tuple[Path, list[Path]]], set[str], list[Path]]]:
        runs = {"seg": (seg_run, _run_files(seg_run, "segmentation")),
                "classifier": (classifier_run, _run_files(classifier_run, "classifier"))}
        gates = _check_runs(seg_run, classifier_run)
        if wheels_from is not None and not Path(wheels_from).is_dir():
            raise CloudpipeError("wheel folder not found", path=Path(wheels_from))
        wheels = sorted(Path(p.name) for p in Path(wheels_from).glob("*.whl")) if wheels_from is not None else []
        for wheel in wheels:
            _own_file(Path(wheels_from), wheel)
        reads = run_inputs([seg_run, classifier_run]) | Inputs.of(*(Path(wheels_from) / w for w in wheels))
        return Plan(reads, builds={out: "bundle"}, overwrite=overwrite), (runs, gates, wheels)

    with Runner.start() as run:  # locked; never replacing a folder that holds one of its inputs (a run, the wheels)
        runs, gates, wheels = run.claim(declare)
        return run.write_folder(out, lambda folder: _build(runs, gates, folder, out, wheels_from, wheels, download,
                                                           require))


def _build(runs: dict[str, tuple[Path, list[Path]]], gates: set[str], folder: Path, out: Path, wheels_from: Path | None,
           wheels_given: list[Path], download: bool, require: tuple[str, ...]) -> Bundle:
    """The work of :func:`make_bundle`, in the empty ``folder`` that becomes ``out``."""
    wheels = folder / "wheels"
    wheels.mkdir()
    for wheel in wheels_given:
        _copy_own(Path(wheels_from), wheel, wheels / wheel.name)
    if not list(wheels.glob("cloudpipe-*.whl")):
        _build_wheel(wheels, folder / "source")
    specs = (*KAGGLE_EXTRAS, *require)
    if download:
        platform, python = KAGGLE_PLATFORM
        _pip("download", "--no-deps", "--only-binary=:all:", "--platform", platform, "--python-version", python,
             "--quiet", "--dest", str(wheels), *specs)
    files = []
    for name, (run, members) in runs.items():
        for member in members:
            _copy_own(run, member, folder / "runs" / name / member)
            files.append(f"runs/{name}/{member.as_posix()}")
    names = sorted(p.name for p in wheels.glob("*.whl"))
    missing = [s for s in specs if not any(n.lower().startswith(_wheel_name(s) + "-") for n in names)]
    (folder / NOTEBOOK).write_text(json.dumps(notebook(gates), indent=1) + "\n")
    (folder / BUNDLE_JSON).write_text(json.dumps({"cloudpipe": __version__, "runs": {k: str(v[0]) for k, v in runs.items()},
                                                  "wheels": names, "gates_on": sorted(gates)}, indent=2) + "\n")
    return Bundle(out, names, [*files, NOTEBOOK, BUNDLE_JSON], missing)
