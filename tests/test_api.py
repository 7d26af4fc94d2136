"""The package's top level: the names a notebook reaches for, and the README's example as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

import cloudpipe

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_and_import_stays_light():
    for name in cloudpipe.__all__:
        assert getattr(cloudpipe, name) is not None and name in dir(cloudpipe)
    assert cloudpipe.mask2rle.__module__ == "cloudpipe.core.rle"
    light = subprocess.run([sys.executable, "-c", "import sys, cloudpipe; print('numpy' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"  # names are imported on first use


def test_readme_library_example_runs_as_written(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "(8, 4)" in out and "pairs kept/blanked" in out and "(4, 350, 525) [" in out and out.strip().endswith("1.0")
    assert not (tmp_path / "runs" / "seg" / "test_seg.csv").exists()  # segment_image writes nothing
    written = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(tmp_path / "clouds" / "sample_submission.csv")
    assert written["Image_Label"].tolist() == sample["Image_Label"].tolist()  # the sample's row order
