"""Rows of a store spread over forked processes: every row once, results in order, pages handed back."""

from __future__ import annotations

import numpy as np

from cloudpipe.data.probstore import probability_store
from cloudpipe.pipeline import parallel


def test_over_rows_covers_every_row_once_in_order(monkeypatch):
    monkeypatch.setattr(parallel, "ROWS_PER_TASK", 3)
    values = np.arange(10) * 7

    def job(start: int, stop: int) -> list[int]:
        return values[start:stop].tolist()

    for processes in (1, 2):
        results = list(parallel.over_rows(job, len(values), processes))
        assert [start for start, _ in results] == [0, 3, 6, 9]
        assert [v for _, part in results for v in part] == values.tolist()
    assert list(parallel.over_rows(job, 0, 2)) == []


def test_release_rows_keeps_a_memory_maps_values(tmp_path):
    store = probability_store(tmp_path, (6, 4, 35, 52))
    store[:] = 9
    parallel.release_rows(store, 1, 4)  # the pages leave this process; the data stays
    assert (store == 9).all()
    parallel.release_rows(np.zeros((3, 2)), 0, 2)  # not a map: left alone
