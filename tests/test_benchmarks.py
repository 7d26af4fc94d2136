"""Every benchmark suite runs (``python -m benchmarks SUITE --smoke``: tiny synthetic data and
stand-in models; the figures mean nothing)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import SUITES, jsonable, run_suite  # noqa: E402
from benchmarks.suites import recipes  # noqa: E402

pytestmark = pytest.mark.slow


def _names(rows):
    return [r["benchmark"] for r in rows]


def check_speed(rows, work, out):
    names = _names(rows)
    assert names[:4] == ["rle decode 350x525", "rle encode 350x525", "rle decode 1400x2100", "rle encode 1400x2100"]
    assert names[4:] == ["train data cls 64x96", "train data seg 32x48", "train step b2 64x96", "train epoch 8 imgs 64x96",
                         "predict 4 imgs whole", "predict per image", "blanking 16 pairs", "predict peak RSS 20 vs 2"]
    assert "submissions agree on 16/16 pairs" in rows[8]["note"] and rows[-1]["target_op"] == "<="
    # per image is a difference of two times, which load can make negative at smoke sizes
    assert all(r["ratio"] > 0 for r in rows if r["benchmark"] != "predict per image") and "predict peak RSS" in out


def check_scale(rows, work, out):
    names = _names(rows)
    assert names[:4] == ["tune 8 imgs", "tune-seg 8 imgs, whole command", "tune 24 imgs", "tune-seg 24 imgs, whole command"]
    assert "same choice and Dice grid: yes" in rows[0]["note"] and "bytes identical: yes" in rows[4]["note"]
    assert [n for n in names if n.startswith("store")][0] == "store .npy (uint8 memory map)"
    assert all(r["ratio"] > 0 for r in rows if "ratio" in r) and "apply-seg" in out


def check_gpu(rows, work, out):
    names = _names(rows)
    assert names[:2] == ["decode only, workers", "decode only, device"]
    inference = [r for r in rows if r["benchmark"].startswith("predict inference")]
    assert len(inference) == 2 and all(r["max_diff"] < 0.05 for r in inference)  # both decode paths agree
    assert [n for n in names if n.startswith("train epoch")] == ["train epoch, recipe 8x4", "train epoch, batch 32x1"]
    assert all(r["value"] > 0 for r in rows) and "smoke run" in out


def check_competition(results, work, out):
    assert 0 <= results["test Dice, masks alone"] <= 1 and 0 <= results["test Dice, gated"] <= 1
    assert [k.split(" (")[0] for k in results["seconds"]] == [
        "prepare data", "train-classifier classifier", "train-seg segmentation", "predict-seg val", "predict-seg test",
        "tune-threshold", "predict"]
    assert results["weights"] == "none" and "smoke run: the figures mean nothing" in out


def check_clouds(results, work, out):
    names = [r["submission"] for r in results["headline"]]
    assert names[1] == "segmentation alone" and "gated by true presence (oracle)" in names
    assert (work / "gated" / "unet_r18" / "report.html").stat().st_size > 10_000 and (work / "report_val.html").is_file()
    assert [r["segmentation"] for r in results["comparison"]] == ["unet_r18", "other", "ensemble"]
    assert results["store MB per 1,000 images"] == 735.0
    assert json.loads((work / "results.json").read_text())["test_images"] == results["test_images"] == 6
    assert "wall time" in out


def check_wins(results, work, out):
    groups = {r["group"].split(" (")[0] for r in results["rows"]}
    assert groups == {"post-processing", "presence source", "segmentation with a head", "gating rules"}
    assert all(0 <= r["gated"] <= 1 for r in results["rows"]) and json.loads((work / "wins.json").read_text())["rows"]
    assert set(results["choices"]) == {r["variant"] for r in results["rows"] if r["group"] == "post-processing"}
    assert not any(k.startswith(("train-classifier", "predict-seg val unet_r18")) for k in results["seconds"])


def check_carry(results, work, out):
    rows = results["rows"]
    assert {(r["seed"], r["tuned on"].split()[0], r["rule"]) for r in rows} == {
        (seed, on, rule) for seed in (1, 2) for on in ("hold-out", "OOF") for rule in ("best", "robust")}
    assert all(r["oracle"] >= r["gate ceiling"] - 1e-9 and 0 <= r["gated"] <= 1 for r in rows)
    assert "ceiling capture" in out
    again = run_suite("carry", ["--smoke", "--data", str(work.parent / "data"), "--work", str(work)])  # all cached
    assert not any(k.startswith(("train", "predict", "grid")) for k in again["seconds"])


def check_recipes(results, work, out):
    assert set(results) == {"seg | today | seed 69", "seg | tta x4 | seed 69", "classifier | today | seed 69"}
    assert all(0 <= r["gated"] <= 1 for r in results.values())
    assert 0 <= results["classifier | today | seed 69"]["majority"] <= 1
    assert json.loads((work / "recipes.json").read_text()) == results
    assert "test Dice / accuracy" in out
    assert run_suite("recipes", ["--smoke", "--data", str(work.parent / "data"), "--work", str(work)]) == results  # kept


CHECKS = {"speed": check_speed, "scale": check_scale, "gpu": check_gpu, "competition": check_competition,
          "clouds": check_clouds, "wins": check_wins, "carry": check_carry, "recipes": check_recipes}
OPTIONS = {"gpu": ["--device", "cpu"]}


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory, tiny_data):
    """One cache and one folder for the suites' smoke runs: data and throw-away runs are made once,
    and wins finds the clouds suite's runs (what it needs) where clouds left them."""
    cache = tmp_path_factory.mktemp("bench-cache")
    (cache / "data").symlink_to(tiny_data, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDPIPE_BENCH_CACHE", str(cache))
        yield cache


def test_every_suite_has_a_check():
    assert set(CHECKS) == set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_suite_smoke(suite, bench_cache, capsys):
    work = bench_cache / ("clouds" if suite == "wins" else suite)  # wins works on the clouds suite's folder
    reused = (work / "results.json").exists()
    folders = ["--data", str(bench_cache / "data"), "--work", str(work)] if hasattr(importlib.import_module(
        f"benchmarks.suites.{suite}"), "WORK") else []
    results = run_suite(suite, ["--smoke", *folders, *OPTIONS.get(suite, []), "--json", str(bench_cache / f"{suite}.json")])
    out = capsys.readouterr().out
    CHECKS[suite](results, work, out)
    assert json.loads((bench_cache / f"{suite}.json").read_text()) == json.loads(json.dumps(results, default=jsonable))
    if suite == "wins":  # it says whether it ran clouds first or reused its outputs
        assert ("running it in" in out) != reused


def test_entry_lists_the_suites_and_refuses_others(capsys):
    from benchmarks.__main__ import main

    assert main([]) is None
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in SUITES)
    with pytest.raises(SystemExit) as refused:
        main(["nope"])
    assert refused.value.code == 2 and "no suite 'nope'" in capsys.readouterr().err


def test_recipe_table_pairs_seeds_with_todays():
    def result(variant, seed, dice):
        return {"stage": "seg", "variant": variant, "seed": seed, "seg alone": dice, "gated": dice + 0.1}

    rows = {r["variant"]: r for r in recipes.summary({
        "a": result("today", 69, 0.50), "b": result("today", 7, 0.40), "c": result("ema", 69, 0.55), "d": result("ema", 7, 0.41)})}
    assert rows["ema"]["seeds"] == "69,7" and rows["ema"]["seg alone"] == pytest.approx(0.48)
    assert rows["ema"]["seg alone spread"] == pytest.approx(0.14) and rows["ema"]["seg alone vs today"] == pytest.approx(0.03)
    assert rows["today"]["gated vs today"] == 0
