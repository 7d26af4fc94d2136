"""The benchmark scripts run (smoke sizes, synthetic data in the clouds350 layout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import real_clouds, real_clouds_wins  # noqa: E402


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
