"""Safe output files: never clobber without ``--overwrite``, never leave half a file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError


def check_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """Validate an output path before any work is done.

    Raises:
        CloudpipeError: the path exists (without ``overwrite``), equals an input, is a folder,
            or its folder cannot be created or written.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).resolve() == path.resolve():
            raise CloudpipeError("output path is also an input; choose another --out", path=path)
    if path.is_dir():
        raise CloudpipeError("output path is a folder; give a file name", path=path)
    if path.exists() and not overwrite:
        raise CloudpipeError("already exists; pass --overwrite to replace it", path=path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CloudpipeError(f"cannot create output folder ({err.strerror})", path=path.parent) from None
    if not os.access(path.parent, os.W_OK):
        raise CloudpipeError("output folder is not writable", path=path.parent)
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> None:
    """Write a CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
