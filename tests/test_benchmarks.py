"""Every benchmark script runs (smoke sizes: tiny synthetic data; the figures mean nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (  # noqa: E402
    bench_predict,
    bench_rle,
    bench_train_data,
    gpu,
    real_clouds,
    real_clouds_carry,
    real_clouds_recipes,
    real_clouds_wins,
    run,
)

pytestmark = pytest.mark.slow


def test_real_clouds_smoke(tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    results = real_clouds.main(["--smoke", "--data", str(tiny_data), "--work", str(work)])
    names = [r["submission"] for r in results["headline"]]
    assert names[1] == "segmentation alone" and "gated by true presence (oracle)" in names
    assert (work / "gated" / "unet_r18" / "report.html").stat().st_size > 10_000 and (work / "report_val.html").is_file()
    assert [r["segmentation"] for r in results["comparison"]] == ["unet_r18", "other", "ensemble"]
    assert results["store MB per 1,000 images"] == 735.0
    assert json.loads((work / "results.json").read_text())["test_images"] == results["test_images"] == 6
    assert "wall time" in capsys.readouterr().out
    again = real_clouds.main(["--smoke", "--data", str(tiny_data), "--work", str(work)])  # trained runs are reused
    assert not any(k.startswith("train") for k in again["seconds"])
    wins = real_clouds_wins.main(["--smoke", "--work", str(work)])  # on the folder real_clouds left
    groups = {r["group"].split(" (")[0] for r in wins["rows"]}
    assert groups == {"post-processing", "presence source", "segmentation with a head", "gating rules"}
    assert all(0 <= r["gated"] <= 1 for r in wins["rows"]) and json.loads((work / "wins.json").read_text())["rows"]


def test_real_clouds_carry_smoke(tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    results = real_clouds_carry.main(["--smoke", "--data", str(tiny_data), "--work", str(work)])
    rows = results["rows"]
    assert {(r["seed"], r["tuned on"].split()[0], r["rule"]) for r in rows} == {
        (seed, on, rule) for seed in (1, 2) for on in ("hold-out", "OOF") for rule in ("best", "robust")}
    assert all(r["oracle"] >= r["gate ceiling"] - 1e-9 and 0 <= r["gated"] <= 1 for r in rows)
    assert "ceiling capture" in capsys.readouterr().out
    again = real_clouds_carry.main(["--smoke", "--data", str(tiny_data), "--work", str(work)])  # all cached
    assert not any(k.startswith(("train", "predict", "grid")) for k in again["seconds"])


def test_real_clouds_recipes_smoke(tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    args = ["--smoke", "--data", str(tiny_data), "--work", str(work), "--train-images", "24", "--variants", "today", "tta x4"]
    results = real_clouds_recipes.main(args)
    assert set(results) == {"seg | today | seed 69", "seg | tta x4 | seed 69", "classifier | today | seed 69"}
    assert all(0 <= r["gated"] <= 1 for r in results.values())
    assert 0 <= results["classifier | today | seed 69"]["majority"] <= 1
    assert json.loads((work / "recipes.json").read_text()) == results
    assert real_clouds_recipes.main(args) == results  # scored variants are kept, not run again
    assert "test Dice / accuracy" in capsys.readouterr().out


def test_recipe_table_pairs_seeds_with_todays():
    def result(variant, seed, dice):
        return {"stage": "seg", "variant": variant, "seed": seed, "seg alone": dice, "gated": dice + 0.1}

    rows = {r["variant"]: r for r in real_clouds_recipes.summary({
        "a": result("today", 69, 0.50), "b": result("today", 7, 0.40), "c": result("ema", 69, 0.55), "d": result("ema", 7, 0.41)})}
    assert rows["ema"]["seeds"] == "69,7" and rows["ema"]["seg alone"] == pytest.approx(0.48)
    assert rows["ema"]["seg alone spread"] == pytest.approx(0.14) and rows["ema"]["seg alone vs today"] == pytest.approx(0.03)
    assert rows["today"]["gated vs today"] == 0


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """One cache for the speed scripts' smoke runs: data and throw-away runs are made once."""
    cache = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDPIPE_BENCH_CACHE", str(cache))
        yield cache


def _names(rows):
    return [r["benchmark"] for r in rows]


def test_bench_rle_smoke(bench_cache, capsys):
    rows = bench_rle.main(["--smoke"])
    assert _names(rows) == ["rle decode 350x525", "rle encode 350x525", "rle decode 1400x2100", "rle encode 1400x2100"]
    assert all(r["ratio"] > 0 and r["runs_per_mask"] > 0 for r in rows)
    assert "rle encode 1400x2100" in capsys.readouterr().out


def test_bench_train_data_smoke(bench_cache, capsys):
    rows = bench_train_data.main(["--smoke"])
    names = _names(rows)
    assert names[0] == "train data cls 64x96" and names[-2:] == ["train step b2 64x96", "train epoch 8 imgs 64x96"]
    assert "train data seg 32x48" in names
    assert all(r["seed_s"] > 0 and r["cloudpipe_s"] > 0 for r in rows)
    assert "train epoch 8 imgs" in capsys.readouterr().out


def test_bench_predict_smoke(bench_cache, capsys):
    rows = bench_predict.main(["--smoke"])
    assert _names(rows) == ["predict 4 imgs whole", "predict per image", "blanking 16 pairs", "predict peak RSS 20 vs 2"]
    assert "submissions agree on 16/16 pairs" in rows[0]["note"]
    assert rows[-1]["seed_s"] > 0 and rows[-1]["target_op"] == "<="
    assert "predict peak RSS" in capsys.readouterr().out


def test_gpu_smoke_on_the_cpu(bench_cache, capsys):
    rows = gpu.main(["--smoke", "--device", "cpu"])
    names = _names(rows)
    assert names[:2] == ["decode only, workers", "decode only, device"]
    inference = [r for r in rows if r["benchmark"].startswith("predict inference")]
    assert len(inference) == 2 and all(r["max_diff"] < 0.05 for r in inference)  # both decode paths agree
    assert [n for n in names if n.startswith("train epoch")] == ["train epoch, recipe 8x4", "train epoch, batch 32x1"]
    assert all(r["value"] > 0 for r in rows)
    assert "smoke run" in capsys.readouterr().out


def test_run_smoke_has_every_part(bench_cache, tmp_path):
    rows = run.main(["--smoke", "--json", str(tmp_path / "rows.json")])
    names = " | ".join(_names(rows))
    for part in ("rle decode", "train data cls", "train step", "train epoch", "predict per image", "predict peak RSS"):
        assert part in names
    assert json.loads((tmp_path / "rows.json").read_text())[0]["benchmark"] == rows[0]["benchmark"]


def test_bench_scale_smoke(bench_cache, capsys):
    from benchmarks import bench_scale

    rows = bench_scale.main(["--smoke"])
    names = _names(rows)
    assert names[:4] == ["tune 8 imgs", "tune-seg 8 imgs, whole command", "tune 24 imgs", "tune-seg 24 imgs, whole command"]
    assert "same choice and Dice grid: yes" in rows[0]["note"] and "bytes identical: yes" in rows[4]["note"]
    assert [n for n in names if n.startswith("store")][0] == "store .npy (uint8 memory map)"
    assert all(r["ratio"] > 0 for r in rows if "ratio" in r) and "apply-seg" in capsys.readouterr().out


def test_gpu_competition_smoke(tiny_data, tmp_path, capsys):
    from benchmarks import gpu_competition

    results = gpu_competition.main(["--smoke", "--data", str(tiny_data), "--work", str(tmp_path / "work"),
                                    "--json", str(tmp_path / "comp.json")])
    assert 0 <= results["test Dice, masks alone"] <= 1 and 0 <= results["test Dice, gated"] <= 1
    assert [k.split(" (")[0] for k in results["seconds"]] == [
        "prepare data", "train classifier", "train segmentation", "predict-seg val + test", "tune gate thresholds",
        "predict"]
    assert json.loads((tmp_path / "comp.json").read_text())["weights"] == "none"
    assert "smoke run: the figures mean nothing" in capsys.readouterr().out
