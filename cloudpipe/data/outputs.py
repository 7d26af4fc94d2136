"""Safe output files: never clobber without ``--overwrite``, never leave half a file, never
write an input, never let two processes write the same file at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError


def check_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = ()) -> Path:
    """Validate an output path before any work is done.

    Args:
        inputs: files the command reads; the output may be none of them.
        input_dirs: folders the command reads (image folders); the output may not lie inside one.

    Raises:
        CloudpipeError: the path exists (without ``overwrite``), equals an input or lies in an
            input folder, is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).resolve() == path.resolve():
            raise CloudpipeError("output path is also an input; choose another --out", path=path)
    for folder in input_dirs:
        if path.resolve().is_relative_to(Path(folder).resolve()):
            raise CloudpipeError(f"output path is inside the input folder {folder}; choose another --out", path=path)
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
def claim_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = ()) -> Iterator[Path]:
    """:func:`check_output`, then hold the output's lock until the body ends (wrap the whole
    command, from the check to the last rename); the check is repeated under the lock, since
    another process may have written the file meanwhile.

    Raises:
        CloudpipeError: as :func:`check_output` and :func:`output_lock`.
    """
    path = check_output(path, overwrite=overwrite, inputs=inputs, input_dirs=input_dirs)
    with output_lock(path):
        yield check_output(path, overwrite=overwrite, inputs=inputs, input_dirs=input_dirs)


def lock_path(path: Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    return Path(path).with_name(f".{Path(path).name}.lock")


@contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on writing ``path`` while the body runs.

    The lock file holds the writer's pid and an ``flock``, which the kernel drops when the
    process dies: a lock file left behind by a killed process (its pid no longer alive) is
    simply taken over. The file is removed when the body ends.

    Raises:
        CloudpipeError: another live process holds the lock, or the lock file cannot be made.
    """
    lock = lock_path(path)
    fd = _acquire(lock, Path(path))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CloudpipeError(f"cannot create the lock file {lock.name} ({err.strerror})", path=path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CloudpipeError(f"is being written by another cloudpipe process (pid {holder}); wait for it "
                                 f"to finish or choose another --out", path=path) from None
        except OSError as err:
            os.close(fd)
            raise CloudpipeError(f"cannot write the lock file {lock.name} ({err.strerror})", path=path) from None
        os.close(fd)  # its holder removed it between our open and our lock: start again


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def _reported(path: Path) -> Iterator[None]:
    """Turn an OSError (full disk, read-only file system, ...) into one line naming ``path``."""
    try:
        yield
    except OSError as err:
        raise CloudpipeError(f"cannot write ({err.strerror or err})", path=path) from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Raises:
        CloudpipeError: writing or renaming failed (e.g. no space left on device); the
            temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with _reported(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_files(writers: Mapping[Path, Callable[[Path], object]]) -> None:
    """Write files that belong together: each writer writes its file to a temporary path, and
    only when all have succeeded are they renamed into place, so a failure leaves every old
    file (or none) as it was, never a mix of old and new.

    Args:
        writers: destination -> function writing the content to the path it is given.

    Raises:
        CloudpipeError: a write failed (naming its file); every temporary file is removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            path = Path(path)
            staged.append((_temporary(path), path))
            with _reported(path):
                write(staged[-1][0])
        for tmp, path in staged:
            with _reported(path):
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def csv_writer(frame: pd.DataFrame, **kwargs) -> Callable[[Path], None]:
    """A writer for :func:`write_files`: ``frame.to_csv`` (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    return lambda path: frame.to_csv(path, **kwargs)


def write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> None:
    """Write a CSV atomically (``index=False`` unless given)."""
    write_files({path: csv_writer(frame, **kwargs)})


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    write_files({path: lambda tmp: tmp.write_text(text)})
