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
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

from cloudpipe.core.errors import CloudpipeError

T = TypeVar("T")

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


FOLDER_MARK = ".cloudpipe"
"""The file inside every folder a command built whole (:func:`build_folder`), naming that command
(``cloudpipe bundle``): ``--overwrite`` replaces only a folder the same command made."""


def check_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = (), folder: bool = False, made_by: str | None = None,
                 create: bool = True) -> Path:
    """Validate an output path before any work is done: none of the files the command reads
    (``inputs``), in none of the folders it reads (``input_dirs``).

    Args:
        folder: the output is a folder the command fills (a training's run folder), whose
            files the command checks itself: it may exist.
        made_by: the output is a folder the command ``made_by`` builds whole
            (:func:`build_folder`): absent or empty, or (with ``overwrite``) one it made.
        create: make the output's folder and check that it is writable (the process that
            writes); False checks the rest only (the other ranks of a ``torchrun`` job).

    Raises:
        CloudpipeError: the path exists (without ``overwrite``), equals an input or lies in an
            input folder, is a folder, or its folder cannot be created or written; a folder
            built whole that holds an input, is a link or a file, or was not made by ``made_by``.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(Path(source), path):
            raise CloudpipeError(f"output path is also an input ({source}); choose another --out", path=path)
    for source_dir in input_dirs:
        if path.resolve().is_relative_to(Path(source_dir).resolve()):
            raise CloudpipeError(f"output path is inside the input folder {source_dir}; choose another --out", path=path)
    if path.is_dir() and not folder and made_by is None:
        raise CloudpipeError("output path is a folder; give a file name", path=path)
    if folder or made_by is not None:
        for source in (Path(s) for s in (*inputs, *(input_dirs if made_by else ())) if s is not None):
            if source.resolve().is_relative_to(path.resolve()):
                raise CloudpipeError(f"output folder holds an input ({source}); choose another --out", path=path)
    if made_by is not None:
        _check_replaceable(path, made_by, overwrite)
    elif path.exists() and not overwrite and not folder:
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


def _check_replaceable(path: Path, made_by: str, overwrite: bool) -> None:
    """Refuse to build the folder ``path`` over what lies there: a link or anything but a folder
    (never followed, never replaced), a folder with something in it without ``overwrite``, or
    one that ``made_by`` did not make (:data:`FOLDER_MARK`), in one line naming ``path`` and
    what lies there."""
    check_plain_path(path, folder=True)
    if not path.exists() or not any(path.iterdir()):
        return
    if not overwrite:
        raise CloudpipeError("already exists; pass --overwrite to replace it", path=path)
    if _mark_of(path) != f"cloudpipe {made_by}":
        raise CloudpipeError(f"is not empty and was not made by cloudpipe {made_by} (it holds no {FOLDER_MARK} of it); "
                             "refusing to delete it: choose another output folder, or remove it yourself", path=path)


def _mark_of(folder: Path) -> str | None:
    """What ``folder``'s :data:`FOLDER_MARK` says (a link, or no plain file: None)."""
    try:
        fd = os.open(folder / FOLDER_MARK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, 256).decode(errors="replace").strip() if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


@contextmanager
def claim_output(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 input_dirs: Iterable[Path] = (), folder: bool = False, made_by: str | None = None,
                 lock: bool = True) -> Iterator[Path]:
    """:func:`check_output`, then hold the output's lock (:func:`output_lock`) until the body
    ends; the check is repeated under the lock, since another process may have written the file
    meanwhile. ``lock=False`` only checks, making no folder (the ranks of ``torchrun`` other than
    rank 0, which write nothing). A refusal or failure leaves no empty new folder."""
    check = dict(overwrite=overwrite, inputs=tuple(inputs), input_dirs=tuple(input_dirs), folder=folder, made_by=made_by)
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
    cleanup): ``.<name>.<pid>.tmp`` (a file of :func:`atomic_path` or :func:`write_files`, a
    folder of :func:`build_folder`), ``.<name>.<pid>.old`` (the folder :func:`build_folder` was
    replacing) and ``.<name>.rank<r>.<pid>.npy`` (a ``torchrun`` rank's share), whose pid is no
    longer alive; a folder is removed whole, a link itself (never what it points to). Called
    with the output's lock held, so no live writer of ``path`` is racing. Returns the paths
    removed (one that cannot be: a CloudpipeError)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:rank\d+\.)?(?P<pid>\d+)\.(?:tmp|npy|old)")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*"):
        match = pattern.fullmatch(candidate.name)
        if match and not _alive(int(match["pid"])):
            removed.append(cleared_path(candidate))
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
    simply taken over. The file is removed when the body ends. Another live process holding
    the lock, or a lock file that cannot be made, is a CloudpipeError."""
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
    (a file where a ``folder`` is needed, or a folder where a file is), in one line naming the
    path and what to do; a missing path is fine."""
    path = Path(path)
    if path.is_symlink():
        raise CloudpipeError("is a symbolic link, which cloudpipe never follows, writes through or replaces; remove it, "
                             "or choose another --out", path=path)
    if folder and path.exists() and not path.is_dir():
        raise CloudpipeError("exists and is not a folder, where a folder is written; move it away, or choose another --out",
                             path=path)
    if not folder and path.is_dir():
        raise CloudpipeError("is a folder where a file is written; move it away, or choose another --out", path=path)
    return path


def cleared_path(path: Path) -> Path:
    """``path`` cleared for a temporary to be written: whatever lies there (a symbolic link
    planted to redirect the write included, a folder whole) is removed, never followed (or a
    CloudpipeError)."""
    path = Path(path)
    with _reported(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # removes the links inside, never what they point to
        else:
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
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success (a failed
    write or rename is a CloudpipeError, the temporary file removed and ``path`` left as it was)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with _reported(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_files(writers: Mapping[Path, Callable[[Path], object] | None]) -> None:
    """Write files that belong together: each writer (destination -> function writing to the
    path it is given) writes to a temporary path, and only when all have succeeded are they
    renamed into place (a None writer's destination removed), so a failure leaves every old file
    (or none) as it was, never a mix of old and new.

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


def build_folder(path: Path, build: Callable[[Path], T], made_by: str, *, overwrite: bool = False) -> T:
    """Build the folder ``path`` whole: ``build`` fills an empty staging folder beside it
    (``.<name>.<pid>.tmp``), the mark of ``made_by`` is added (:data:`FOLDER_MARK`), and only
    then does it take ``path``'s place; a folder it replaces is moved aside
    (``.<name>.<pid>.old``) and removed once the new one is in place. Call it with ``path``'s
    lock held (:func:`claim_output` with ``made_by``); what lies at ``path`` is checked again
    just before the swap. A failure leaves ``path`` as it was and no staging folder; a process
    killed at any point leaves at most those hidden folders, which the next claim of ``path``
    removes (:func:`remove_stale_temporaries`). Returns what ``build`` returned.

    Raises:
        CloudpipeError: ``build``'s own, or a failed write or rename (e.g. no space left on
            device), one line naming ``path``; or what lies at ``path`` may not be replaced.
    """
    path = Path(path)
    staging, old = _temporary(path), cleared_path(path.with_name(f".{path.name}.{os.getpid()}.old"))
    try:
        with _reported(path):
            staging.mkdir()
            made = build(staging)
            (staging / FOLDER_MARK).write_text(f"cloudpipe {made_by}\n")
            _check_replaceable(path, made_by, overwrite)
            if path.exists():
                os.rename(path, old)
                try:
                    os.rename(staging, path)
                except OSError:
                    os.rename(old, path)
                    raise
            else:
                os.rename(staging, path)
    finally:
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
    return made


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
