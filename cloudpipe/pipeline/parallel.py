"""The images of a probability store spread over the cores: forked processes that read the
store's memory map where the parent left it (nothing copied or pickled), each handing the
pages of its rows back when done, so memory stays flat however large the store."""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import cv2
import numpy as np

T = TypeVar("T")

ROWS_PER_TASK = 8  # images per task of the process pool: ~5.9 MB of the store


def release_rows(store: np.ndarray, start: int, stop: int) -> None:
    """Hand rows ``start..stop`` of a memory-mapped store back (``MADV_DONTNEED``): the pages
    leave this process's memory (a shared map loses nothing) and stay in the page cache;
    anything but a memory map is left alone."""
    buffer = getattr(store, "base", None)
    if not isinstance(store, np.memmap) or not isinstance(buffer, mmap.mmap) or stop <= start:
        return
    row = store[0].nbytes
    first = store.offset % mmap.ALLOCATIONGRANULARITY + start * row  # np.memmap maps from an aligned offset
    begin = first - first % mmap.PAGESIZE
    buffer.madvise(mmap.MADV_DONTNEED, begin, first - begin + (stop - start) * row)


_TASK: list[Callable] = []
"""The job of the forked processes of :func:`over_rows` (inherited, never pickled)."""


def _run_task(rows: tuple[int, int]):
    return _TASK[0](*rows)


def over_rows(job: Callable[[int, int], T], n: int, processes: int | None = None) -> Iterator[tuple[int, T]]:
    """``(start, job(start, stop))`` for rows ``0..n`` in tasks of :data:`ROWS_PER_TASK`, in
    order, on ``processes`` forked processes (None: one per core; one process, or a single
    task, runs inline), which inherit ``job`` and run OpenCV on one thread."""
    tasks = [(start, min(start + ROWS_PER_TASK, n)) for start in range(0, n, ROWS_PER_TASK)]
    processes = min(len(os.sched_getaffinity(0)) if processes is None else processes, len(tasks))
    if processes <= 1:
        yield from ((rows[0], job(*rows)) for rows in tasks)
        return
    _TASK[:] = [job]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # before the fork: a child inheriting OpenCV's thread pool would wait on its threads for ever
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            yield from zip((start for start, _ in tasks), pool.imap(_run_task, tasks))
    finally:
        _TASK.clear()
        cv2.setNumThreads(threads)
