"""tune-seg and apply-seg at the competition's scale: today's tuning loop (kept here as the
baseline) against :func:`tune_postprocess` in the same run, ``tune-seg`` as a whole command
(against a checkout of the code before with ``--today``), ``apply-seg`` against ``predict-seg
--split test``, and store formats; on a tiny 2-fold run over the first ``--base`` clouds350
train images (synthetic ones where it is missing, and with ``--smoke``), its store repeated under
new names for larger sets. benchmarks/README.md, "At the competition's scale", has the rows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from benchmarks.common import CLOUDS350, ROOT, cache_dir, format_table, info_row, load_average, prepare_data, repeat_images, row, synthetic_data
from cloudpipe.algorithms.postprocess import MinSize, PostProcess, Shape, Step, choose, grid_stats
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active, join_label
from cloudpipe.core.rle import rle2mask
from cloudpipe.data.beside import store_paths
from cloudpipe.data.kaggle import SAMPLE_SUBMISSION_CSV, TRAIN_CSV, TRAIN_IMAGES, load_train_data
from cloudpipe.data.probstore import StoreInfo, array_writer, info_writer, read_store
from cloudpipe.pipeline.seg_masks import tune_postprocess

MB = 1e6


# --- today's tuning loop (the baseline) --------------------------------------------------------


@dataclass(frozen=True)
class WalkedMinSize(MinSize):
    """:class:`MinSize` as a subclass: ``grid_stats`` then draws its masks one by one."""


@dataclass(frozen=True)
class WalkedShape(Shape):
    """:class:`Shape` as a subclass, drawn mask by mask."""


def walked(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The steps as ``grid_stats`` walked them before this benchmark's issue: the tree walk over
    every step's masks (one per distinct variant), each leaf counted on the full image; the
    component shortcut takes only the package's own classes, so subclasses keep the old path."""
    kinds = {MinSize: WalkedMinSize, Shape: WalkedShape}
    return tuple(kinds[type(s)](grid=s.grid) if type(s) in kinds else s for s in steps)


def reference_tune(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                   steps: tuple[Step, ...]) -> tuple[PostProcess, np.ndarray]:
    """``tune_postprocess`` as it was: one process, every pair in turn, walked."""
    grid = tuple(len(s.grid) for s in steps)
    inter = np.zeros((len(names), len(active().classes), *grid), np.int64)
    area = np.zeros_like(inter)
    truth_area = np.zeros((len(names), len(active().classes)), np.int64)
    truth_rles = rles.loc[names, list(active().classes)].to_numpy()
    for i in range(len(names)):
        for k in range(len(active().classes)):
            truth = resize_nearest(rle2mask(truth_rles[i, k], mask_shape), active().submission_size)
            truth_area[i, k] = int(truth.sum())
            inter[i, k], area[i, k] = grid_stats(walked(steps), store[i, k], truth)
    return choose(steps, inter, area, truth_area)


# --- the data -----------------------------------------------------------------------------------


def cloudpipe(*args, timed: bool = False, root: Path = ROOT) -> tuple[float, int, str]:
    """Run ``python -m cloudpipe ARGS`` from the checkout ``root`` (under GNU time when
    ``timed``); returns seconds, the peak RSS of its largest process in KiB (0 untimed) and its
    output. Fails loudly."""
    command = [sys.executable, "-m", "cloudpipe", *map(str, args)]
    if timed and shutil.which("time") and Path("/usr/bin/time").exists():
        command = ["/usr/bin/time", "-f", "peak_kib %M", *command]
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    peak = re.search(r"peak_kib (\d+)", done.stderr)
    return seconds, int(peak.group(1)) if peak else 0, done.stdout


def base_set(work: Path, images: int, test_images: int, smoke: bool) -> tuple[Path, Path]:
    """The data folder of the first ``images`` train and ``test_images`` test images, and a
    tiny 2-fold run with its validation and test stores (made once, then reused)."""
    data, run = work / f"data{images}", work / f"run{images}"
    if (run / "test_seg_probs.npy").is_file():
        return data, run
    source = CLOUDS350 if CLOUDS350.is_dir() and not smoke else synthetic_data(images, test_images, active().submission_size)
    prepare_data(source, data, images, test_images)
    from cloudpipe import InferenceSettings, load_config, predict_segmentation, train_run

    size = [32, 64] if smoke else [96, 160]  # made in this process: setting up is not what is measured
    train_run(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "folds": 2, "epochs": 1,
                                                     "image_size": size, "device": "cpu"}), data, run, progress=False)
    for split in ("val", "test"):
        predict_segmentation(run, data, split, run / f"{split}_seg.csv", settings=InferenceSettings(device="cpu", progress=False))
    return data, run


def scaled_set(work: Path, data: Path, run: Path, n: int) -> tuple[Path, Path]:
    """A data folder and validation store of ``n`` images: the base images and their stored
    probabilities repeated under new names (made once, then reused)."""
    store, info = read_store(run / "val_seg_probs.npy")
    folder = work / f"scaled{n}"
    npy = folder / "val_seg_probs.npy"
    if npy.is_file():
        return folder / "data", npy
    names = repeat_images(data / TRAIN_IMAGES, info.images, n, folder / "data" / TRAIN_IMAGES, lambda name, i: f"r{i}_{name}")
    wide = pd.read_csv(data / TRAIN_CSV, dtype=str, keep_default_na=False).set_index("Image_Label")["EncodedPixels"]
    pd.DataFrame({"Image_Label": [join_label(name, c) for name in names for c in active().classes],
                  "EncodedPixels": [wide[join_label(name.split("_", 1)[1], c)] for name in names for c in active().classes]}
                 ).to_csv(folder / "data" / TRAIN_CSV, index=False)
    rows = np.arange(n) % len(info.images)
    tmp = npy.with_suffix(".tmp")
    array_writer(_Rows(store, rows))(tmp)
    info_writer(StoreInfo.of("val", names, info.runs, info.weights, info.fingerprints))(store_paths(folder / "val_seg.csv")[1])
    os.replace(tmp, npy)
    return folder / "data", npy


class _Rows:
    """``store[rows]`` read a slice at a time (what :func:`array_writer` asks of an array)."""

    def __init__(self, store: np.ndarray, rows: np.ndarray):
        self.store, self.rows, self.shape = store, rows, (len(rows), *store.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.store[self.rows[part]]


# --- the rows -----------------------------------------------------------------------------------


def tune_rows(data: Path, npy: Path, repeats: int, today: Path | None = None) -> tuple[list[dict], float]:
    """Today's loop against :func:`tune_postprocess` in this process, and ``tune-seg`` whole
    (against the checkout ``today``'s when given)."""
    store, info = read_store(npy)
    train = load_train_data(data)
    steps = PostProcess().steps
    n = len(info.images)
    ref_s, new_s = [], []
    for _ in range(repeats):  # interleaved
        started = time.perf_counter()
        ref_post, ref_dice = reference_tune(store, info.images, train.rles, train.image_shape, steps)
        ref_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        post, dice, _ = tune_postprocess(store, info.images, train.rles, train.image_shape, steps, "best")
        new_s.append(time.perf_counter() - started)
        if post.values != ref_post.values or not np.array_equal(dice, ref_dice):
            raise SystemExit(f"tuning on {n} images chose otherwise: {post.describe()} against {ref_post.describe()}")
    tuned = float(np.mean([dice[k].max() for k in range(len(active().classes))]))
    rows = [row(f"tune {n} imgs", min(ref_s) / n, min(new_s) / n, 5.0, unit="ms/img",
                note=f"best of {repeats}, same choice and Dice grid: yes; tuned Dice {tuned:.4f}; "
                     f"{os.cpu_count()} cores; whole: {min(ref_s):.1f} s -> {min(new_s):.1f} s")]
    command = ["tune-seg", "--store", npy, "--data", data, "--overwrite"]
    # the exact search, as today's code does (robust is the default since, a choice of other values)
    seconds, peak, _ = cloudpipe(*command, "--choice", "best", "--out", npy.parent / "tuned.csv", timed=True)
    note = (f"incl. start-up and image checks; peak RSS {peak / 1024:.0f} MiB (largest process); "
            f"store {npy.stat().st_size / MB:.0f} MB")
    if today is None:
        rows.append(info_row(f"tune-seg {n} imgs, whole command", seconds, "s", note, peak_mib=peak / 1024))
    else:
        before, before_peak, _ = cloudpipe(*command, "--out", npy.parent / "tuned_today.csv", timed=True, root=today)
        same = (npy.parent / "tuned.csv").read_bytes() == (npy.parent / "tuned_today.csv").read_bytes()
        rows.append(row(f"tune-seg {n} imgs, whole command", before, seconds, 5.0, unit="s", scale=1.0,
                        note=f"{note}; today's peak {before_peak / 1024:.0f} MiB; same CSV: {'yes' if same else 'NO'}",
                        peak_mib=peak / 1024))
    return rows, tuned


def apply_rows(data: Path, run: Path) -> list[dict]:
    """``apply-seg`` against ``predict-seg --split test`` on the base run's test images."""
    predicted = run / "test_seg.csv"
    predict_s, _, _ = cloudpipe("predict-seg", "--run", run, "--data", data, "--split", "test", "--out", predicted,
                                "--overwrite", "--quiet", "--device", "cpu", timed=True)
    applied = run.parent / "applied_test_seg.csv"
    apply_s, _, _ = cloudpipe("apply-seg", "--store", run / "test_seg_probs.npy", "--postprocess", run / "seg_postprocess.json",
                              "--data", data, "--out", applied, "--overwrite", timed=True)
    same = applied.read_bytes() == predicted.read_bytes()
    if not same:
        raise SystemExit("apply-seg wrote other bytes than predict-seg --split test")
    n = len(pd.read_csv(data / SAMPLE_SUBMISSION_CSV)) // len(active().classes)
    return [row(f"apply-seg {n} test imgs", predict_s, apply_s, None, unit="s", scale=1.0,
                note="whole commands: predict-seg --split test (tiny model) vs apply-seg on its store; CSV bytes identical: yes")]


def store_rows(npy: Path, data: Path, run: Path, tuned: float, sample: int) -> list[dict]:
    """The N-image store as today's .npy, blosc2 zstd chunks (one per image), and at half
    resolution (upsampled bilinearly at tuning): size, read time per image, tuned Dice."""
    store, info = read_store(npy)
    rows_read = np.arange(min(sample, len(store)))
    per_1000 = lambda nbytes, n: nbytes / n * 1000 / MB  # noqa: E731

    def read_npy(i: int) -> np.ndarray:
        return np.array(store[i])

    read_s = _per_image(read_npy, rows_read)
    rows = [info_row("store .npy (uint8 memory map)", per_1000(npy.stat().st_size, len(store)), "MB/1k",
                     f"read {read_s * 1e3:.2f} ms/img (page cache warm); tuned Dice {tuned:.4f}")]
    half_shape = (active().submission_size[1] // 2, active().submission_size[0] // 2)  # cv2's (w, h)

    def halve(entry: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(c, half_shape, interpolation=cv2.INTER_AREA) for c in entry])

    def upsample(entry: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(c, active().submission_size[::-1], interpolation=cv2.INTER_LINEAR) for c in entry])

    try:
        import blosc2
    except ImportError:
        blosc2 = None
    if blosc2 is not None:
        params = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]}
        frames = [blosc2.compress2(np.ascontiguousarray(store[i]), **params) for i in rows_read]
        lossless = all(np.array_equal(np.frombuffer(blosc2.decompress2(f), np.uint8).reshape(store.shape[1:]), store[i])
                       for f, i in zip(frames, rows_read))
        unpack_s = _per_image(lambda i: np.frombuffer(blosc2.decompress2(frames[i]), np.uint8).reshape(store.shape[1:]),
                              rows_read)
        rows.append(info_row("store blosc2 zstd-5 per image", per_1000(sum(map(len, frames)), len(frames)), "MB/1k",
                             f"read {unpack_s * 1e3:.2f} ms/img (decompress); lossless: {'yes' if lossless else 'NO'}, "
                             f"so tuned Dice {tuned:.4f}; {len(frames)} images sampled"))
        halves = [blosc2.compress2(np.ascontiguousarray(halve(store[i])), **params) for i in rows_read]
        rows.append(info_row("store half-res + blosc2 zstd-5", per_1000(sum(map(len, halves)), len(halves)), "MB/1k",
                             "read: decompress + upsample, see the half-res row for Dice"))
    half_bytes = 4 * half_shape[0] * half_shape[1]
    up_s = _per_image(lambda i: upsample(halve(store[i])), rows_read) - _per_image(lambda i: halve(store[i]), rows_read)
    base_store, base_info = read_store(run / "val_seg_probs.npy")
    train = load_train_data(data)
    approx = np.stack([upsample(halve(base_store[i])) for i in range(len(base_store))])
    post, dice, _ = tune_postprocess(approx, base_info.images, train.rles, train.image_shape)
    full_post, full_dice, _ = tune_postprocess(base_store, base_info.images, train.rles, train.image_shape)
    half_tuned = float(np.mean([dice[k].max() for k in range(len(active().classes))]))
    full_tuned = float(np.mean([full_dice[k].max() for k in range(len(active().classes))]))
    # The half-res choice scored on the full-resolution probabilities: what it would really give.
    index = [tuple(s.grid.index(v) for s, v in zip(post.steps, post.values[c])) for c in active().classes]
    really = float(np.mean([full_dice[k][index[k]] for k in range(len(active().classes))]))
    rows.append(info_row("store half-res uint8 .npy", per_1000(half_bytes, 1), "MB/1k",
                         f"read +{max(up_s, 0) * 1e3:.2f} ms/img (bilinear upsample); on {len(base_store)} imgs tuned Dice "
                         f"{half_tuned:.4f} vs {full_tuned:.4f} full-res; its choice on the full-res probabilities "
                         f"{really:.4f}; same choice: {'yes' if post.values == full_post.values else 'no'}"))
    return rows


def _per_image(fn, rows: np.ndarray) -> float:
    """Best-of-3 seconds per image of ``fn(i)`` over ``rows``."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in rows:
            fn(int(i))
        best = min(best, (time.perf_counter() - started) / len(rows))
    return best


MEASURES = "tune-seg (against today's loop), apply-seg and probability stores at 300 and 3,000 images"


def options(parser) -> None:
    parser.add_argument("--base", type=int, default=300, help="real images trained on and stored [default: 300]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000], help="set sizes to tune [default: 300 3000]")
    parser.add_argument("--test-images", type=int, default=100, help="test images for the apply rows [default: 100]")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved tuning passes per size [default: 1]")
    parser.add_argument("--work", type=Path, default=None, help="cache folder [default: $CLOUDPIPE_BENCH_CACHE/scale]")
    parser.add_argument("--today", type=Path, default=None,
                        help="a checkout of today's code (git worktree add DIR main): tune-seg as a whole command there too")


def run(args) -> list[dict]:
    if args.smoke:
        args.base, args.sizes, args.test_images = 8, [8, 24], 4
    work = args.work or cache_dir() / ("scale-smoke" if args.smoke else "scale")
    work.mkdir(parents=True, exist_ok=True)
    print(f"scale: load {load_average()}, {os.cpu_count()} cores, work {work}" + (" (smoke run)" if args.smoke else ""))
    data, run = base_set(work, args.base, args.test_images, args.smoke)
    rows, npy, tuned = [], None, None
    for n in args.sizes:
        scaled, npy = (data, run / "val_seg_probs.npy") if n == args.base else scaled_set(work, data, run, n)
        more, tuned = tune_rows(scaled, npy, args.repeats, args.today)
        rows += more
    rows += apply_rows(data, run)
    rows += store_rows(npy, data, run, tuned, sample=24 if args.smoke else 300)
    print(format_table(rows, baseline="today"))
    print(f"load at the end {load_average()}")
    return rows
