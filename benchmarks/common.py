"""What every benchmark script shares: sizes, the cached synthetic data, timing, rows and the table.

A row is a dict: ``benchmark`` (its name), ``seed_s`` and ``cloudpipe_s`` (the two sides' times
in seconds, or whatever ``unit``/``scale`` say), ``ratio`` (baseline / cloudpipe), ``target``
(the ratio asked for, or None), ``target_op`` (``>=``, the default, or ``<=``) and ``note``.
Rows without a baseline (throughput only) carry ``value`` and ``unit`` instead of the times.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudpipe.core import table
from cloudpipe.core.competition import IMAGE_SHAPE

ROOT = Path(__file__).resolve().parent.parent
REAL_IMAGES = ROOT.parent / "shared" / "data" / "real" / "train_images"


@dataclass(frozen=True)
class Sizes:
    """The sizes a benchmark runs at: the JPEGs, the classifier's input and the segmentation
    model's (None: ``configs/seg.yaml``'s); ``smoke`` says the run only checks that the scripts
    work (CI), its figures mean nothing."""

    image_shape: tuple[int, int] = IMAGE_SHAPE
    cls_size: tuple[int, int] = (512, 768)
    seg_size: tuple[int, int] | None = None
    smoke: bool = False


FULL = Sizes()
SMOKE = Sizes(image_shape=(140, 210), cls_size=(64, 96), seg_size=(32, 48), smoke=True)


def cache_dir() -> Path:
    """Where made data and throw-away runs are kept between runs: ``$CLOUDPIPE_BENCH_CACHE``,
    else ``$TMPDIR/cloudpipe-bench``."""
    return Path(os.environ.get("CLOUDPIPE_BENCH_CACHE", Path(tempfile.gettempdir()) / "cloudpipe-bench"))


def synthetic_data(train: int, test: int, shape: tuple[int, int] = IMAGE_SHAPE, seed_: int = 0) -> Path:
    """A cached ``cloudpipe.data.synth`` dataset (made once, then reused; ~0.2 s per 1400x2100 image).

    The folder is written under a temporary name and renamed into place, so an interrupted
    run never leaves a half-made cache behind.
    """
    from cloudpipe.data.synth import make_dataset

    cache = cache_dir()
    out = cache / f"synth-{shape[0]}x{shape[1]}-train{train}-test{test}-seed{seed_}"
    if (out / "test_truth.csv").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".making-"))
    make_dataset(tmp / "data", train=train, test=test, shape=shape, seed=seed_, progress=False)
    try:
        os.replace(tmp / "data", out)
    except OSError:  # made meanwhile by another process
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def repeat_images(source: Path, originals: Sequence[str], n: int, folder: Path,
                  name_of: Callable[[str, int], str]) -> list[str]:
    """``n`` symlinks in ``folder`` to the ``originals`` in ``source``, cycled, the i-th named
    ``name_of(original, i)`` (a larger set than was made, every file decoded every time);
    returns the names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        original = originals[i % len(originals)]
        name = name_of(original, i)
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(source / original)
        names.append(name)
    return names


def over(fn: Callable[[object], object], items: Sequence) -> Callable[[], None]:
    """A zero-argument function that calls ``fn`` on every item, keeping no result (a pass for
    :func:`time_interleaved`)."""

    def one_pass() -> None:
        for item in items:
            fn(item)

    return one_pass


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = False) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each zero-argument function, calls interleaved so that
    load from other processes hits every side alike; ``warmup`` calls each once first, untimed."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def row(benchmark: str, seed_s: float, ours_s: float, target: float | None, unit: str = "ms", scale: float = 1e3,
        **extra) -> dict:
    """A comparison row: times in seconds, ``ratio`` = baseline / cloudpipe; ``unit``/``scale``
    say how the times are printed (``ms`` and 1e3 by default)."""
    return {"benchmark": benchmark, "seed_s": seed_s, "cloudpipe_s": ours_s, "ratio": seed_s / ours_s,
            "target": target, "unit": unit, "scale": scale, **extra}


def info_row(benchmark: str, value: float, unit: str, note: str = "", **extra) -> dict:
    """A row without a baseline: one figure (images/s, seconds...)."""
    return {"benchmark": benchmark, "value": value, "unit": unit, "note": note, **extra}


def met(r: dict) -> bool | None:
    """Whether a row meets its target (``target_op`` ``>=``, the default, or ``<=``); None
    without a target."""
    if r.get("target") is None or "ratio" not in r:
        return None
    return r["ratio"] >= r["target"] if r.get("target_op", ">=") == ">=" else r["ratio"] <= r["target"]


def format_table(rows: Sequence[dict], baseline: str = "seed") -> str:
    """Rows as a fixed-width text table (:func:`cloudpipe.core.table.format_table`); ``baseline``
    heads the baseline column."""
    shown = []
    for r in rows:
        scale, ok = r.get("scale", 1e3), met(r)
        compared = "ratio" in r
        shown.append({"benchmark": r["benchmark"], "unit": r.get("unit", "ms"),
                      baseline: f"{r['seed_s'] * scale:.3f}" if compared else "",
                      "cloudpipe": f"{r['cloudpipe_s'] * scale:.3f}" if compared else f"{r['value']:.3g}",
                      "ratio": f"{r['ratio']:.2f}x" if compared else "",
                      "target": "" if not compared or r["target"] is None else f"{r.get('target_op', '>=')}{r['target']:g}x",
                      " ": "" if ok is None else ("met" if ok else "MISSED"), "note": r.get("note", "")})
    return table.format_table(shown, left=("benchmark", "note"))


def summary(rows: Sequence[dict]) -> str:
    """``"N targets met, M missed (names)"``."""
    missed = [r["benchmark"] for r in rows if met(r) is False]
    return (f"{sum(met(r) is True for r in rows)} targets met, {len(missed)} missed"
            + (f" ({', '.join(missed)})" if missed else ""))


def load_average() -> str:
    """The 1/5/15-minute load averages, for the header and footer of a run."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())
