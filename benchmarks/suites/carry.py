"""Decisions that carry: for every seed of benchmarks/carry.yaml (each its own split) and every
head weight, one K-fold segmentation run on the first clouds350 train images; ``predict-seg
--split val`` gives the out-of-fold probabilities, ``--split test`` the fold models' mean. Then,
without running a model again, post-processing and the presence gate are tuned on fold 0's
validation images (hold-out) or on every out-of-fold image (OOF), by the ``best`` or the
``robust`` rule, and applied to the test images, beside the best the same candidates reach when
chosen on the test images and the oracle gate. Everything is cached in ``--work``; ``carry.json``
keeps every figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.common import HERE, Bench, prepare_data
from cloudpipe.core.profile import active
from cloudpipe.core.table import format_table
from cloudpipe.data.beside import presence_path, store_paths

MEASURES = "clouds350: whether post-processing and gates tuned on hold-out or out-of-fold images carry to the test images"
WORK = "cloudpipe-carry"
SMOKE = {"train_images": 24, "test_images": 6, "seeds": [1, 2], "head_weights": [0.1],
         "seg": {"arch": "tiny", "image_size": [32, 64], "epochs": 1, "batch_size": 8, "folds": 3}}
MIN_SIZE_CUT = 10000
"""The top of the minimum-size grid before it was raised to 60,000 px."""


def grid_of(stats_file: Path, store: np.ndarray, truth: np.ndarray, steps) -> dict[str, np.ndarray]:
    """Intersection and area of every (image, class) pair under every combination of the steps'
    grids, and the truth areas; saved to ``stats_file``."""
    from cloudpipe.algorithms.postprocess import grid_stats

    n = len(store)
    grid = tuple(len(s.grid) for s in steps)
    inter, area = np.zeros((n, 4, *grid), np.int64), np.zeros((n, 4, *grid), np.int64)
    for i in range(n):
        for k in range(4):
            inter[i, k], area[i, k] = grid_stats(steps, store[i, k], truth[i, k])
    stats = {"inter": inter, "area": area, "truth_area": truth.reshape(n, 4, -1).sum(-1)}
    np.savez(stats_file, **stats)
    return stats


def truth_masks(rles: pd.DataFrame, names: list[str], shape: tuple[int, int]) -> np.ndarray:
    """0/1 truth masks (n, 4, 350, 525) of ``names`` from a wide RLE frame at ``shape``."""
    from cloudpipe.core.masks import resize_nearest
    from cloudpipe.core.rle import rle2mask

    table = rles.loc[names, list(active().classes)].to_numpy()
    return np.stack([[resize_nearest(rle2mask(table[i, k], shape), active().submission_size) for k in range(4)]
                     for i in range(len(names))])


def analyse(val: dict, test: dict, fold0: np.ndarray, sources_val: dict, sources_test: dict, steps) -> list[dict]:
    """Every tuning variant of one run, tuned on validation statistics and scored on the test ones
    (``per image``: each test image's gated Dice, for paired comparisons)."""
    from cloudpipe.algorithms.postprocess import choose, chosen_dice
    from cloudpipe.algorithms.presence import blend, choose_gates
    from cloudpipe.algorithms.thresholds import PairScores
    from cloudpipe.core.metric import dice_score

    names = [s.name for s in steps]
    min_j = names.index("min_size")
    grids = {"default steps": (slice(None),) * len(steps),
             f"min size grid to {MIN_SIZE_CUT:,}": tuple(
                 slice(None) if j != min_j else slice(0, list(steps[min_j].grid).index(MIN_SIZE_CUT) + 1)
                 for j in range(len(steps))),
             "no shape step": tuple(slice(None) if s.name != "shape" else slice(0, 1) for s in steps)}

    def sub(stats, rows, cut):
        index = (rows, slice(None), *cut)
        return stats["inter"][index], stats["area"][index], stats["truth_area"][rows]

    def pairs_at(stats, rows, cut, post, sub_steps):
        """Per-pair Dice kept / blanked of the post-processing ``post`` (chosen in ``cut``)."""
        inter, area, truth_area = sub(stats, rows, cut)
        keep = np.empty(truth_area.shape)
        for k, c in enumerate(active().classes):
            j = tuple(list(s.grid).index(v) for s, v in zip(sub_steps, post.values[c]))
            keep[:, k] = dice_score(inter[(slice(None), k, *j)], area[(slice(None), k, *j)], truth_area[:, k])
        return PairScores([str(i) for i in range(len(keep))], keep, (truth_area == 0).astype(float), truth_area > 0)

    rows_out = []
    n_val, n_test = len(val["truth_area"]), len(test["truth_area"])
    every_test = np.arange(n_test)
    for grid_name, cut in grids.items():
        sub_steps = tuple(type(s)(grid=tuple(np.asarray(s.grid, dtype=object)[c])) for s, c in zip(steps, cut))
        # The ceiling of post-processing: chosen on the test images themselves.
        best_post, best_dice = choose(sub_steps, *sub(test, every_test, cut))
        for tuned_on, rows in (("hold-out", fold0), ("OOF", np.arange(n_val))):
            for rule in ("best", "robust"):
                post, _ = choose(sub_steps, *sub(val, rows, cut), rule)
                alone = chosen_dice(post, best_dice)
                val_pairs, test_pairs = pairs_at(val, rows, cut, post, sub_steps), pairs_at(test, every_test, cut, post, sub_steps)
                oracle = np.where(test_pairs.present, test_pairs.keep, 1.0).mean(axis=0)
                gate = choose_gates({s: v[rows] for s, v in sources_val.items()}, val_pairs, rule=rule)
                thresholds = np.array([gate.sweeps[c].threshold for c in active().classes])
                absent = blend(sources_test, gate.gates) < thresholds
                per_pair = np.where(absent, test_pairs.blank, test_pairs.keep)
                gated = per_pair.mean(axis=0)
                ceiling_gate = choose_gates(sources_test, test_pairs)
                ceiling = np.array([ceiling_gate.sweeps[c].score for c in active().classes])
                row = {"steps": grid_name, "tuned on": f"{tuned_on} ({len(rows)})", "rule": rule}
                for k, c in enumerate(active().classes):
                    row[f"alone {c}"], row[f"gated {c}"] = alone[k], gated[k]
                    row[f"post gap {c}"] = alone[k] - chosen_dice(best_post, best_dice)[k]
                    row[f"gate gap {c}"] = gated[k] - ceiling[k]
                row |= {"alone": alone.mean(), "gated": gated.mean(), "gate ceiling": ceiling.mean(),
                        "oracle": oracle.mean(), "post ceiling": chosen_dice(best_post, best_dice).mean(),
                        "capture": (gated.mean() - alone.mean()) / max(oracle.mean() - alone.mean(), 1e-9),
                        "ceiling capture": (ceiling.mean() - alone.mean()) / max(oracle.mean() - alone.mean(), 1e-9),
                        "post": post.describe(),
                        "gates": ", ".join(f"{c} {'+'.join(g)} {gate.sweeps[c].threshold:.3f}" for c, g in gate.gates.items()),
                        "per image": per_pair.mean(axis=1)}  # the gated Dice of each test image, for paired differences
                rows_out.append(row)
    return rows_out


def presence_quality(sources: dict[str, np.ndarray], present: np.ndarray) -> list[dict]:
    """What limits a presence gate: per source and class, the ROC AUC of its scores on the
    test images, its accuracy at 0.5 and the majority baseline's (always the commoner answer)."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for source, scores in sources.items():
        for k, c in enumerate(active().classes):
            labels = present[:, k]
            auc = roc_auc_score(labels, scores[:, k]) if 0 < labels.sum() < len(labels) else float("nan")
            rows.append({"source": source, "class": c, "auc": auc, "acc at 0.5": float(((scores[:, k] >= 0.5) == labels).mean()),
                         "majority": float(max(labels.mean(), 1 - labels.mean()))})
    return rows


def options(parser) -> None:
    parser.add_argument("--config", type=Path, default=HERE / "carry.yaml", help="the budget [default: benchmarks/carry.yaml]")
    parser.add_argument("--models-only", action="store_true", help="train and predict, analyse nothing")


def run(args) -> dict:
    from cloudpipe import InferenceSettings
    from cloudpipe.algorithms.postprocess import PostProcess
    from cloudpipe.algorithms.presence import PixelStats
    from cloudpipe.data.kaggle import load_train_data, read_mask_csv, read_probs_csv, to_wide
    from cloudpipe.data.probstore import read_store

    settings = yaml.safe_load(args.config.read_text())
    if args.smoke:
        settings.update(SMOKE)
    work = args.work
    bench = Bench(prepare_data(args.data, work / "data", settings["train_images"], settings.get("test_images")),
                  InferenceSettings(batch_size=16, progress=False))
    log, seconds = bench.step, bench.step.seconds
    runs = {}
    for seed in settings["seeds"]:
        for head in settings["head_weights"]:
            run = bench.train("segmentation", {**settings["seg"], "seed": seed, "split_seed": seed, "head_weight": head},
                              work / "runs" / f"seed{seed}_head{head:g}")
            out = bench.pipeline(run.name, run, run, reuse=True)
            runs[(seed, head)] = (run, {"val": out.val, "test": out.test})
    if args.models_only:
        return {"seconds": seconds}

    steps = PostProcess().steps
    train = load_train_data(bench.data)
    test_rles = to_wide(read_mask_csv(bench.data / "test_truth.csv", shape=active().submission_size))
    table, quality = [], []
    for (seed, head), (run, csvs) in runs.items():
        stores = {split: read_store(store_paths(csv)[0]) for split, csv in csvs.items()}
        (val_store, val_info), (test_store, test_info) = stores["val"], stores["test"]
        splits = pd.read_csv(run / "splits.csv", dtype={"image": str}, keep_default_na=False)
        fold_of = dict(zip(splits["image"], splits["fold"].astype(str)))
        fold0 = np.array([i for i, name in enumerate(val_info.images) if fold_of[name] == "0"])
        grids = {}
        for split, store, rles, images, shape in (("val", val_store, train.rles, val_info.images, train.image_shape),
                                                  ("test", test_store, test_rles, test_info.images, active().submission_size)):
            cached = run / f"{split}_grid.npz"
            grids[split] = dict(np.load(cached)) if cached.exists() else log(
                f"grid stats {split} {run.name}", grid_of, cached, store, truth_masks(rles, images, shape), steps)
        val, test = grids["val"], grids["test"]
        pixel = PixelStats()
        sources_val, sources_test = pixel.scores(val_store), pixel.scores(test_store)
        sources_val = {s: sources_val[s] for s in ("top_mean", "max")}
        sources_test = {s: sources_test[s] for s in ("top_mean", "max")}
        if presence_path(csvs["val"]).exists():
            sources_val["head"] = read_probs_csv(presence_path(csvs["val"])).loc[val_info.images].to_numpy()
            sources_test["head"] = read_probs_csv(presence_path(csvs["test"])).loc[test_info.images].to_numpy()
        for row in analyse(val, test, fold0, sources_val, sources_test, steps):
            table.append({"seed": seed, "head": head, **row})
        quality += [{"seed": seed, "head": head, **r} for r in presence_quality(sources_test, test["truth_area"] > 0)]
    frame = pd.DataFrame(table)
    show = ["seed", "head", "steps", "tuned on", "rule", "alone", "gated", "gate ceiling", "oracle", "capture", "ceiling capture"]
    print(format_table(frame[show].round(4).to_dict("records")))
    print("\nPresence sources on the test images (ROC AUC; accuracy at 0.5 against always the commoner answer):")
    print(format_table(pd.DataFrame(quality).groupby(["head", "source", "class"], sort=False)[["auc", "acc at 0.5", "majority"]]
                       .mean().round(3).reset_index().to_dict("records")))
    pairs = paired_differences(frame)
    print("\nPaired differences of the gated test Dice (mean over test images, +- its standard error):")
    print(format_table(pairs))
    rows = [{k: v for k, v in r.items() if k != "per image"} for r in table]
    (work / "carry.json").write_text(json.dumps({"rows": rows, "pairs": pairs, "presence": quality, "seconds": seconds,
                                                 "config": settings}, indent=2, default=str))
    return {"rows": rows, "pairs": pairs, "seconds": seconds}


def paired_differences(frame: pd.DataFrame) -> list[dict]:
    """robust - best (per tuning set) and OOF - hold-out (per rule) for every run and grid: the
    mean difference of the gated Dice over the test images and its standard error."""
    out = []
    keys = ["seed", "head", "steps"]
    for key, group in frame.groupby(keys, sort=False):
        by = {(r["tuned on"].split()[0], r["rule"]): r["per image"] for _, r in group.iterrows()}
        comparisons = [(f"robust - best, {on}", by[(on, "robust")], by[(on, "best")]) for on in ("hold-out", "OOF")]
        comparisons += [(f"OOF - hold-out, {rule}", by[("OOF", rule)], by[("hold-out", rule)]) for rule in ("best", "robust")]
        for name, a, b in comparisons:
            diff = a - b
            out.append({**dict(zip(keys, key)), "comparison": name, "mean": round(float(diff.mean()), 4),
                        "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)})
    return out
