"""Profiles on disk: a packaged name or a YAML file, the profile a data folder or a run says,
and the one-line refusal to mix two profiles.

A data folder says its profile in ``profile.yaml`` beside ``train.csv`` (``synth --profile``
writes one); a folder without one is the default ``clouds`` unless ``--profile`` names
another. A training run records its profile in ``RUN/profile.yaml``; a run without one (an
older cloudpipe's) trained on ``clouds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import read_model
from cloudpipe.core.profile import DEFAULT, PACKAGED, Profile, active, packaged
from cloudpipe.data.runfolder import PROFILE_YAML, read_yaml_mapping


def load_profile(spec: str | Path) -> Profile:
    """A packaged profile by name (``clouds``, ``steel``) or a profile YAML file (validated: a
    bad one is a one-line CloudpipeError naming the file and the field)."""
    if isinstance(spec, str) and spec in PACKAGED:
        return packaged(spec)
    path = Path(spec)
    if not path.is_file():
        raise CloudpipeError(f"no profile {str(spec)!r}: give one of {', '.join(PACKAGED)} or a profile YAML file")
    return read_model(Profile, read_yaml_mapping(path, "profile"), "profile", path=path)


def profile_text(profile: Profile) -> str:
    """``profile`` as the YAML file :func:`load_profile` reads back."""
    return yaml.safe_dump(profile.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False,
                          default_flow_style=None)


def write_folder_profile(folder: Path, profile: Profile) -> None:
    """Write ``folder/profile.yaml`` (:func:`profile_text`) into a data folder being built, unless
    ``profile`` is the default ``clouds``, which a folder without one is."""
    if not profile.is_default:
        (Path(folder) / PROFILE_YAML).write_text(profile_text(profile))


def data_profile(data_dir: Path, option: str | Path | None = None) -> Profile:
    """The profile of a data folder: its ``profile.yaml``, else ``option`` (``--profile``), else
    ``clouds``. A folder whose file differs from ``option`` is refused in one line."""
    path = Path(data_dir) / PROFILE_YAML
    own = load_profile(path) if path.exists() else None
    chosen = load_profile(option) if option is not None else None
    if own is not None and chosen is not None and own != chosen:
        raise CloudpipeError(f"says profile {own.name!r}; --profile {chosen.name!r} differs (leave --profile out)", path=path)
    return own or chosen or packaged(DEFAULT)


def require_active(data_dir: Path) -> None:
    """Refuse to read a data folder whose ``profile.yaml`` is not the active profile (a notebook
    that did not make it active; a command always has), in one line saying how to."""
    path = Path(data_dir) / PROFILE_YAML
    if path.exists() and (own := load_profile(path)) != active():
        raise CloudpipeError(f"says profile {own.name!r}, not the active {active().name!r}: read it under its own "
                             f"(cloudpipe.set_profile(cloudpipe.load_profile({str(path)!r})))", path=path)


def run_profile(run_dir: Path) -> Profile:
    """The profile a run trained on: ``RUN/profile.yaml``, else ``clouds`` (a run of an older cloudpipe)."""
    path = Path(run_dir) / PROFILE_YAML
    return load_profile(path) if path.exists() else packaged(DEFAULT)


def require_same(profile: Profile, other: Profile, what: str) -> None:
    """Refuse, in one line, ``what`` (a run, a store) of another profile than ``profile``, the data's."""
    if other != profile:
        same_name = " (same name, other facts)" if other.name == profile.name else ""
        raise CloudpipeError(f"{what} is of profile {other.describe()}, the data of {profile.describe()}{same_name}: "
                             f"runs and stores work only with data of their own profile (a data folder says its "
                             f"profile in {PROFILE_YAML}, else --profile)")


def command_profile(*, data: Path | None = None, runs: Iterable[Path] = (), option: str | Path | None = None) -> Profile:
    """The profile a command runs under: its data folder's (:func:`data_profile`); without one,
    ``option``, else its runs' profile, else ``clouds``. Every run must be of that profile."""
    runs = list(runs)
    if data is not None:
        profile = data_profile(data, option)
    elif option is not None:
        profile = load_profile(option)
    else:
        profile = run_profile(runs[0]) if runs else packaged(DEFAULT)
    for run in runs:
        require_same(profile, run_profile(run), f"run {run}")
    return profile
