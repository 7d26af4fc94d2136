"""Safe output files: never clobber without ``--overwrite``, never leave half a file, never
write an input, never let two processes write the same file at once.

A command declares its outputs and everything it reads as one :class:`Inputs` (built from
:func:`cloudpipe.data.kaggle.data_inputs`, :func:`cloudpipe.data.runfolder.run_inputs` and the
files named on its command line) to :class:`cloudpipe.engine.runner.Runner`, which claims each
output with :func:`claim_output`, so no output can replace an input however the input was reached.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError


@dataclass(frozen=True)
class Inputs:
    """Everything a command reads: files no output may replace, folders no output may lie in."""

    files: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()

    @classmethod
    def of(cls, *files: Path | None, folders: Iterable[Path] = ()) -> Inputs:
        """Files (None skipped) and folders."""
        return cls(tuple(Path(f) for f in files if f is not None), tuple(Path(f) for f in folders))

    def __or__(self, other: Inputs) -> Inputs:
        return Inputs(self.files + other.files, self.folders + other.folders)


def _same_file(a: Path, b: Path) -> bool:
    """The same path (symlinks resolved) or the same file (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = (), folder: bool = False, create: bool = True) -> Path:
    """Validate an output path before any work is done.

    Args:
        inputs: files the command reads; the output may be none of them.
        input_dirs: folders the command reads (image folders); the output may not lie inside one.
        folder: the output is a folder the command fills (a training's run folder), whose
            files the command checks itself: it may exist.
        create: make the output's folder and check that it is writable (the process that
            writes); False checks the rest only (the other ranks of a ``torchrun`` job).

    Raises:
        CloudpipeError: the path exists (without ``overwrite``), equals an input or lies in an
            input folder, is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(Path(source), path):
            raise CloudpipeError(f"output path is also an input ({source}); choose another --out", path=path)
    for source_dir in input_dirs:
        if path.resolve().is_relative_to(Path(source_dir).resolve()):
            raise CloudpipeError(f"output path is inside the input folder {source_dir}; choose another --out", path=path)
    if path.is_dir() and not folder:
        raise CloudpipeError("output path is a folder; give a file name", path=path)
    if folder:
        for source in (Path(s) for s in inputs if s is not None):
            if source.resolve().is_relative_to(path.resolve()):
                raise CloudpipeError(f"output folder holds an input ({source}); choose another --out", path=path)
    if path.exists() and not overwrite and not folder:
        raise CloudpipeError("already exists; pass --overwrite to replace it", path=path)
    if not create:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CloudpipeError(f"cannot create output folder ({err.strerror})", path=path.parent) from None
    if not os.access(path.parent, os.W_OK):
        raise CloudpipeError("output folder is not writable", path=path.parent)
    return path


@contextmanager
def claim_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = (), folder: bool = False, lock: bool = True) -> Iterator[Path]:
    """:func:`check_output`, then hold the output's lock until the body ends (wrap the whole
    command, from the check to the last rename); the check is repeated under the lock, since
    another process may have written the file meanwhile. ``lock=False`` only checks, making no
    folder (the ranks of ``torchrun`` other than rank 0, which write nothing). A refusal or
    failure leaves no empty new folder. :class:`cloudpipe.engine.runner.Runner` claims every output of a command
    with it.

    Raises:
        CloudpipeError: as :func:`check_output` and :func:`output_lock`.
    """
    check = dict(overwrite=overwrite, inputs=tuple(inputs), input_dirs=tuple(input_dirs), folder=folder)
    if not lock:  # the writer alone makes (and removes) folders: two ranks would race on them
        yield check_output(path, **check, create=False)
        return
    with no_new_empty_folders(Path(path).parent):
        path = check_output(path, **check)
        with output_lock(path):
            path = check_output(path, **check)
            remove_stale_temporaries(path)
            yield path


@contextmanager
def no_new_empty_folders(folder: Path) -> Iterator[None]:
    """Remove, when the body ends, the folders on the way to ``folder`` that the body created
    and left empty (innermost first)."""
    folder, missing = Path(folder), []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        yield
    finally:
        for made in missing:
            try:
                made.rmdir()
            except OSError:  # not empty (the body's output is in it) or never made
                if made.exists():
                    break


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed processes (``kill -9`` runs no
    cleanup): ``.<name>.<pid>.tmp`` (:func:`atomic_path`, :func:`write_files`) and
    ``.<name>.rank<r>.<pid>.npy`` (a ``torchrun`` rank's share), whose pid is no longer alive.
    Called with the output's lock held, so no live writer of ``path`` is racing.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:rank\d+\.)?(?P<pid>\d+)\.(?:tmp|npy)")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*"):
        match = pattern.fullmatch(candidate.name)
        if match and not _alive(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a planted link is never followed
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise CloudpipeError(f"the lock file {lock.name} is a symbolic link, which cloudpipe never follows; "
                                     "remove it", path=path) from None
            raise CloudpipeError(f"cannot create the lock file {lock.name} ({err.strerror})", path=path) from None
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_nlink > 1:  # a hard link would let the pid overwrite another file
            os.close(fd)
            raise CloudpipeError(f"the lock file {lock.name} is not a plain file of its own (a link or a special file); "
                                 "remove it", path=path)
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
        except OSError as err:  # e.g. a full disk: leave no empty lock file behind
            lock.unlink(missing_ok=True)
            os.close(fd)
            raise CloudpipeError(f"cannot write the lock file {lock.name} ({err.strerror})", path=path) from None
        os.close(fd)  # its holder removed it between our open and our lock: start again


def _temporary(path: Path) -> Path:
    return cleared_path(path.with_name(f".{path.name}.{os.getpid()}.tmp"))


def check_plain_path(path: Path, *, folder: bool = False) -> Path:
    """Refuse a path a command writes in place (a file it replaces, a folder it fills) that is a
    symbolic link, whose target the write would reach or replace, or that is of the other kind
    (a file where a ``folder`` is needed, or a folder where a file is); a missing path is fine.

    Raises:
        CloudpipeError: one line naming the path and what to do.
    """
    path = Path(path)
    if path.is_symlink():
        raise CloudpipeError("is a symbolic link, which cloudpipe never writes through; remove it, or choose "
                             "another --out", path=path)
    if folder and path.exists() and not path.is_dir():
        raise CloudpipeError("is a file where a folder is written; move it away, or choose another --out", path=path)
    if not folder and path.is_dir():
        raise CloudpipeError("is a folder where a file is written; move it away, or choose another --out", path=path)
    return path


def cleared_path(path: Path) -> Path:
    """``path`` cleared for a temporary to be written: whatever lies there (a symbolic link
    planted to redirect the write included) is removed, never followed.

    Raises:
        CloudpipeError: it cannot be removed.
    """
    path = Path(path)
    with _reported(path):
        path.unlink(missing_ok=True)
    return path


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


def write_files(writers: Mapping[Path, Callable[[Path], object] | None]) -> None:
    """Write files that belong together: each writer writes its file to a temporary path, and
    only when all have succeeded are they renamed into place, so a failure leaves every old
    file (or none) as it was, never a mix of old and new.

    Args:
        writers: destination -> function writing the content to the path it is given, or None
            to remove the destination with the group (a file the new ones no longer match).

    Raises:
        CloudpipeError: a write failed (naming its file); every temporary file is removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            if write is None:
                continue
            path = Path(path)
            staged.append((_temporary(path), path))
            with _reported(path):
                write(staged[-1][0])
        for tmp, path in staged:
            with _reported(path):
                os.replace(tmp, path)
        for path in (Path(p) for p, write in writers.items() if write is None):
            with _reported(path):
                path.unlink(missing_ok=True)
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
