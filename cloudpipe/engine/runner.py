"""One runner for every command: what it reads, writes and replaces, declared once.

A command builds a :class:`Plan` inside :meth:`Runner.claim` (so that a bad input met on
every ``torchrun`` rank is one line, from rank 0) and the runner, not the command:

- checks every output against everything the command reads: no output is an input, with or
  without ``--overwrite`` (the files of a run read as a member of an ensemble included);
- refuses an existing output without ``overwrite``, except those the command re-makes on
  purpose (:attr:`Plan.replaces`: a run's own tuned file; :attr:`Plan.folders`: a training's
  run folder, whose files training checks itself); a folder built whole (:attr:`Plan.builds`:
  a bundle, a data folder) only ever replaces one the same command made, never a link or a file;
- locks every output (rank 0, the one that writes; never following a link) until the command
  ends, so two commands never write one file or train into one folder at once;
- writes the outputs that belong together as one group (:meth:`Runner.write`: all new or all
  old), and builds a folder beside its place and swaps it in (:meth:`Runner.write_folder`), on
  rank 0 alone;
- shares the work of a sharded command across ranks (:meth:`Runner.predict_store`).

Pipeline functions call :meth:`Runner.start` once and never look at ranks, locks or links.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import Inputs, build_folder, claim_output, cleared_path, write_files
from cloudpipe.data.probstore import probability_store
from cloudpipe.engine.dist import Dist

T = TypeVar("T")
Writer = Callable[[Path], object]


@dataclass(frozen=True)
class Plan:
    """What a command reads and writes, declared before any work is done (each kind of output
    as the module docstring says): ``reads``, files no output may be and folders no output may
    lie in; ``writes``, new outputs (``overwrite``: they and ``builds`` may replace existing
    ones); ``replaces``, outputs re-made on purpose; ``folders``, folders the command fills;
    ``builds``, folders built whole, each with the name of the command (``bundle``)."""

    reads: Inputs = field(default_factory=Inputs)
    writes: Sequence[Path] = ()
    _: KW_ONLY
    replaces: Sequence[Path] = ()
    folders: Sequence[Path] = ()
    builds: Mapping[Path, str] = field(default_factory=dict)
    overwrite: bool = False

    def outputs(self) -> list[Path]:
        """Every path the command may write."""
        return [Path(p) for p in (*self.writes, *self.replaces, *self.folders, *self.builds)]


class Runner:
    """One command's run: its place among the ranks, its claimed outputs, its writing."""

    def __init__(self, dist: Dist, claims: contextlib.ExitStack):
        self.dist = dist
        self._claims = claims
        self._outputs: set[Path] = set()
        self._builds: dict[Path, tuple[str, bool]] = {}

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[Runner]:
        """Run a command: its ranks (one when not under ``torchrun``), its claims released and
        the process group torn down when it ends, however it ends."""
        dist = Dist.from_env()
        try:
            with contextlib.ExitStack() as claims:
                yield cls(dist, claims)
        finally:
            dist.close()

    @property
    def is_main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.dist.is_main

    def claim(self, declare: Callable[[], tuple[Plan, T]]) -> T:
        """Run ``declare`` (the command's checks of its inputs, returning its plan and whatever
        the command needs next) on every rank, then check every output of the plan on every
        rank and lock them on rank 0 until the command ends. A failure on any rank is every
        rank's (rank 0 reports it).

        Raises:
            CloudpipeError: from ``declare``, or an output that may not be written (an input, a
                folder, existing without ``overwrite``, unwritable, locked by another process).
        """
        with self.dist.together():
            plan, value = declare()
            builds = {Path(p): made_by for p, made_by in plan.builds.items()}
            for path in plan.outputs():
                replaced = any(Path(path) == Path(p) for p in plan.replaces)
                self._claims.enter_context(claim_output(
                    path, overwrite=plan.overwrite or replaced, inputs=plan.reads.files, input_dirs=plan.reads.folders,
                    folder=Path(path) in map(Path, plan.folders), made_by=builds.get(Path(path)), lock=self.is_main))
        self._outputs |= {Path(p).resolve() for p in plan.outputs()}
        self._builds |= {p.resolve(): (made_by, plan.overwrite) for p, made_by in builds.items()}
        return value

    def together(self) -> contextlib.AbstractContextManager[None]:
        """A phase whose failure on one rank stops every rank (:meth:`Dist.together`)."""
        return self.dist.together()

    def write(self, writers: Mapping[Path, Writer | None]) -> None:
        """Write outputs that belong together (:func:`~cloudpipe.data.outputs.write_files`), on
        rank 0 alone; a path that no plan of this command declared is a ValueError (a bug)."""
        undeclared = [str(p) for p in writers if Path(p).resolve() not in self._outputs]
        if undeclared:
            raise ValueError(f"outputs not declared in the command's plan: {', '.join(undeclared)}")
        if self.is_main:
            write_files(writers)

    def write_folder(self, path: Path, build: Callable[[Path], T]) -> T | None:
        """Build a folder of the plan's ``builds`` whole (:func:`~cloudpipe.data.outputs.build_folder`)
        and return what ``build`` returned, on rank 0 alone (the other ranks get None); a path no
        plan of this command declared as built is a ValueError (a bug)."""
        declared = self._builds.get(Path(path).resolve())
        if declared is None:
            raise ValueError(f"folder not declared in the command's plan: {path}")
        made_by, overwrite = declared
        return build_folder(path, build, made_by, overwrite=overwrite) if self.is_main else None

    def predict_store(self, names: list[str], predict: Callable[[list[str]], tuple[np.ndarray, pd.DataFrame | None]],
                      out: Path) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        """A probability store of ``names`` predicted in shares: ``predict`` gets this rank's
        share (every name when not distributed) and returns its store (rows in that order) and
        presence frame (or None); rank 0 gets the whole store, rows in ``names`` order, and the
        whole presence frame; the other ranks (None, None). A failure in any rank's share stops
        every rank.
        """
        with self.dist.together():
            store, presence = predict(self.dist.shard(names))
        if self.dist.world == 1:
            return store, presence
        return self._join_store(store, presence, names, out)

    def _join_store(self, store: np.ndarray, presence: pd.DataFrame | None, names: list[str],
                    out: Path) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        """Rank 0's store and presence of all ``names`` from every rank's share (rows
        ``rank, rank + world, ...``); (None, None) on the other ranks.

        The other ranks' uint8 shares pass through hidden files beside ``out``
        (``.<name>.rank<r>.<pid>.npy``: the next run of ``out`` removes those of a rank killed
        with ``-9``), which rank 0 copies into its memory map a few rows at a time and removes:
        memory stays flat, where gathering the arrays would hold every share in every rank's
        memory at once. The small presence frames are gathered directly.
        """
        dist = self.dist
        mine = out.with_name(f".{out.name}.rank{dist.rank}.{os.getpid()}.npy")
        shares = [mine]
        try:
            with dist.together():
                if not dist.is_main:
                    try:
                        with open(cleared_path(mine), "xb") as file:  # never through a planted link
                            np.save(file, store)
                    except OSError as err:
                        raise CloudpipeError(f"cannot write this rank's probabilities ({err.strerror or err})",
                                             path=mine) from None
            gathered = dist.gather((presence, mine))  # also: every share is written
            heads, shares = [h for h, _ in gathered], [path for _, path in gathered]
            full = None
            if dist.is_main:
                full = probability_store(out.parent, (len(names), *store.shape[1:]))
                for r, path in enumerate(shares):
                    part = store if r == 0 else np.load(path, mmap_mode="r")
                    rows = np.arange(r, len(names), dist.world)
                    for start in range(0, len(rows), 16):
                        full[rows[start : start + 16]] = part[start : start + 16]
                    del part
            dist.barrier()  # rank 0 has read every share
        finally:
            for path in shares if dist.is_main else [mine]:
                path.unlink(missing_ok=True)
        if not dist.is_main:
            return None, None
        joined = None if any(h is None for h in heads) else pd.concat(heads).reindex(pd.Index(names, name="image"))
        return full, joined
