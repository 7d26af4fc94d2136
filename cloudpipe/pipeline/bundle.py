"""``cloudpipe bundle``: a folder to upload to Kaggle as a dataset, for a notebook that runs offline.

Kaggle's code competitions run notebooks with the internet off, and segmentation-models-pytorch
is not on their image. The bundle holds what the notebook needs beyond that image:

- ``wheels/``: cloudpipe's own wheel (built from its source with ``pip wheel --no-deps``) and
  the wheels of :data:`KAGGLE_EXTRAS` (``pip download --no-deps`` for Kaggle's Linux x86_64
  Python), or those of a prepared folder (``wheels_from``, offline);
- ``runs/seg``, ``runs/classifier``: each run's ``config.yaml``, ``splits.csv``,
  ``val_probs.csv``, ``best.pt`` (or every ``fold{i}/best.pt``) and tuned files
  (``seg_postprocess.json``, ``thresholds.json``): what predicting needs and what the tuned
  files' run fingerprints are computed from; no ``last.pt``, metrics or stores;
- ``submit.ipynb``: installs the wheels with ``pip --no-index``, runs ``predict-seg --split
  test`` and ``predict`` on the competition data, and writes ``/kaggle/working/submission.csv``;
- ``bundle.json``: what is in it (the notebook finds the bundle by this file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cloudpipe import __version__
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.runfolder import (
    CONFIG_YAML,
    POSTPROCESS_JSON,
    SPLITS_CSV,
    THRESHOLDS_JSON,
    VAL_PROBS_CSV,
    read_config_values,
    run_inputs,
    trained_checkpoints,
)
from cloudpipe.engine.runner import Plan, Runner
from cloudpipe.pipeline.sources import registry, source_inputs

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
RUN_FILES = (CONFIG_YAML, SPLITS_CSV, VAL_PROBS_CSV, POSTPROCESS_JSON, THRESHOLDS_JSON)
KAGGLE_DATA = "/kaggle/input/understanding_cloud_organization"


@dataclass
class Bundle:
    """What :func:`make_bundle` wrote."""

    out: Path
    wheels: list[str]
    files: list[str]
    missing: list[str] = field(default_factory=list)
    """Requirements of :data:`KAGGLE_EXTRAS` (and ``--require``) with no wheel in the bundle."""


def _run_files(run_dir: Path, task: str) -> list[Path]:
    """The files of a run the bundle carries, relative to it.

    Raises:
        CloudpipeError: not a ``task`` run, or one without a finished checkpoint.
    """
    config = read_config_values(run_dir)
    if config.get("task") != task:
        raise CloudpipeError(f"a {config.get('task')} run; --{'seg' if task == 'segmentation' else 'classifier'}-run needs "
                             f"a {task} run", path=run_dir)
    files = [Path(name) for name in RUN_FILES if (run_dir / name).is_file()]
    return files + [p.relative_to(run_dir) for p in trained_checkpoints(run_dir)]


def _gate_inputs(classifier: Path) -> set[str]:
    """The inputs (:func:`~cloudpipe.pipeline.sources.source_inputs`' names) of the sources beyond
    the classifier that the run's ``thresholds.json`` gates on."""
    path = classifier / THRESHOLDS_JSON
    if not path.is_file():
        raise CloudpipeError(f"no {THRESHOLDS_JSON}: run tune-threshold on the classifier first", path=classifier)
    try:
        gate = json.loads(path.read_text()).get("gate") or {}
    except (OSError, ValueError, AttributeError) as err:
        raise CloudpipeError(f"cannot read ({err})", path=path) from None
    known = registry()
    sources = {s for weights in gate.values() for s in weights if s in known}
    return {known[s].input.name for s in sources if known[s].input is not None}


def _source_root() -> Path:
    """The folder cloudpipe was installed from (its ``pyproject.toml``), to build its wheel.

    Raises:
        CloudpipeError: cloudpipe runs from an installed wheel: pass ``--wheels-from``.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise CloudpipeError("cloudpipe's source (pyproject.toml) is not beside the package: pass --wheels-from a folder "
                             "holding its wheel")
    return root


def _build_wheel(wheels: Path, scratch: Path) -> None:
    """cloudpipe's wheel into ``wheels``, built (offline, with this Python's setuptools) from a
    copy of its source in ``scratch``: the source tree gets no build folders."""
    root = _source_root()
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
    """The bundle's notebook (nbformat 4): find the bundle, install its wheels offline, predict
    the test masks and gate them into ``/kaggle/working/submission.csv``. Paths come from
    ``CLOUDPIPE_DATA`` / ``CLOUDPIPE_WORKING`` when set (Kaggle's otherwise)."""
    seg_out = ["--no-keep-store"] if "seg_store" not in gates else []
    test_seg = Path("test_seg.csv")
    gate_args = [f"{i.option!r}, str(WORK / {i.beside(test_seg).name!r})" for name, i in source_inputs().items() if name in gates]
    cells = [
        ("markdown", "# cloudpipe: the submission, offline\n\nAdd this dataset and the competition's data to the "
                     "notebook; run all. Installs cloudpipe from the bundle's wheels (no internet), draws the test "
                     "masks with the segmentation run, gates them with the presence classifier and its tuned "
                     "thresholds, and writes `/kaggle/working/submission.csv`."),
        ("code", "import glob, os, subprocess, sys\nfrom pathlib import Path\n\n"
                 f"BUNDLE = Path(glob.glob('/kaggle/input/*/{BUNDLE_JSON}')[0]).parent if 'CLOUDPIPE_BUNDLE' not in os.environ "
                 "else Path(os.environ['CLOUDPIPE_BUNDLE'])\n"
                 f"DATA = os.environ.get('CLOUDPIPE_DATA', '{KAGGLE_DATA}')\n"
                 "WORK = Path(os.environ.get('CLOUDPIPE_WORKING', '/kaggle/working'))\n"
                 "wheels = sorted(str(p) for p in (BUNDLE / 'wheels').glob('*.whl'))\n"
                 "subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--quiet', *wheels], "
                 "check=True)"),
        ("code", "def cloudpipe(*args):\n    subprocess.run([sys.executable, '-m', 'cloudpipe', *map(str, args)], check=True)\n\n"
                 "cloudpipe('predict-seg', '--run', BUNDLE / 'runs' / 'seg', '--data', DATA, '--split', 'test', "
                 f"'--out', WORK / 'test_seg.csv', {', '.join(repr(a) for a in seg_out) + ', ' if seg_out else ''}'--quiet')"),
        ("code", "cloudpipe('predict', '--seg', WORK / 'test_seg.csv', '--run', BUNDLE / 'runs' / 'classifier', "
                 f"'--data', DATA, '--out', WORK / 'submission.csv', {''.join(a + ', ' for a in gate_args)}'--quiet')"),
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
    """Write the bundle folder ``out`` (see the module's text), built in a temporary folder
    beside it and renamed into place: a failure leaves no partial bundle.

    Args:
        wheels_from: a folder of wheels to copy in (``cloudpipe-*.whl`` among them: no build).
        download: ``pip download`` :data:`KAGGLE_EXTRAS` and ``require`` for Kaggle's platform
            (needs the network); False: the wheels of ``wheels_from`` only.

    Raises:
        CloudpipeError: a bad run, a classifier run not tuned, an existing ``out`` without
            ``overwrite``, a failed build or download.
    """
    seg_run, classifier_run, out = Path(seg_run), Path(classifier_run), Path(out)
    runs = {"seg": (seg_run, _run_files(seg_run, "segmentation")),
            "classifier": (classifier_run, _run_files(classifier_run, "classifier"))}
    if not (seg_run / POSTPROCESS_JSON).is_file():
        raise CloudpipeError(f"no {POSTPROCESS_JSON}: run predict-seg --split val on the run first", path=seg_run)
    gates = _gate_inputs(classifier_run)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CloudpipeError("already exists; pass --overwrite to replace it", path=out)
    if wheels_from is not None and not Path(wheels_from).is_dir():
        raise CloudpipeError("wheel folder not found", path=Path(wheels_from))
    reads = run_inputs([seg_run, classifier_run]) | Inputs.of(*(Path(wheels_from).glob("*.whl") if wheels_from else ()))
    with Runner.start() as claim:  # locked; never replacing a folder that holds one of its inputs (a run, the wheels)
        claim.claim(lambda: (Plan(reads, folders=[out]), None))
        return _build(runs, gates, out, wheels_from, download, require)


def _build(runs: dict[str, tuple[Path, list[Path]]], gates: set[str], out: Path, wheels_from: Path | None,
           download: bool, require: tuple[str, ...]) -> Bundle:
    """The work of :func:`make_bundle` once ``out`` is claimed."""
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        wheels = tmp / "wheels"
        wheels.mkdir(parents=True)
        for wheel in sorted(Path(wheels_from).glob("*.whl")) if wheels_from is not None else []:
            shutil.copy2(wheel, wheels / wheel.name)
        if not list(wheels.glob("cloudpipe-*.whl")):
            _build_wheel(wheels, tmp / "source")
        specs = (*KAGGLE_EXTRAS, *require)
        if download:
            platform, python = KAGGLE_PLATFORM
            _pip("download", "--no-deps", "--only-binary=:all:", "--platform", platform, "--python-version", python,
                 "--quiet", "--dest", str(wheels), *specs)
        files = []
        for name, (run, members) in runs.items():
            for member in members:
                target = tmp / "runs" / name / member
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / member, target)
                files.append(f"runs/{name}/{member.as_posix()}")
        names = sorted(p.name for p in wheels.glob("*.whl"))
        missing = [s for s in specs if not any(n.lower().startswith(_wheel_name(s) + "-") for n in names)]
        (tmp / NOTEBOOK).write_text(json.dumps(notebook(gates), indent=1) + "\n")
        (tmp / BUNDLE_JSON).write_text(json.dumps({"cloudpipe": __version__, "runs": {k: str(v[0]) for k, v in runs.items()},
                                                    "wheels": names, "gates_on": sorted(gates)}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Bundle(out, names, [*files, NOTEBOOK, BUNDLE_JSON], missing)
