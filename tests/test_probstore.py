"""Probability stores: round trip, and one-line errors for bad or truncated files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import use_profile
from cloudpipe.data.beside import info_path, store_paths
from cloudpipe.data.outputs import write_files
from cloudpipe.data.probstore import StoreInfo, array_writer, info_writer, probability_store, read_store
from tests.conftest import CLOUDS


def write_store(tmp_path, n=3, images=None):
    store = np.random.default_rng(0).integers(0, 256, (n, 4, 350, 525), dtype=np.uint8)
    npy, meta = store_paths(tmp_path / "val_seg.csv")
    info = StoreInfo.of("val", images or [f"{i}.jpg" for i in range(n)], ["/runs/a"], [1.0], ["0" * 64])
    write_files({npy: array_writer(store), meta: info_writer(info)})
    return npy, store, info


def test_the_store_json_is_written_by_the_model_that_reads_it(tmp_path):
    """StoreInfo is the JSON's model: written in its field order (``classes`` only for a profile other than
    the default), and never a file its reader refuses (duplicate names, a weight missing)."""
    npy, _, info = write_store(tmp_path)
    assert list(json.loads(info_path(npy).read_text())) == [f for f in StoreInfo.model_fields if f != "classes"]
    with pytest.raises(CloudpipeError, match=r"^probability store: images: has duplicates \(a.jpg\), got \['a.jpg', 'a.jpg'\]$"):
        StoreInfo.of("val", ["a.jpg", "a.jpg"], [], [])
    with pytest.raises(CloudpipeError, match="^probability store: needs one weight and one fingerprint per run"):
        StoreInfo.of("val", ["a.jpg"], ["/runs/a"], [], ["0" * 64])


def test_names_follow_the_csv(tmp_path):
    assert [p.name for p in store_paths(tmp_path / "val_seg.csv")] == ["val_seg_probs.npy", "val_seg_probs.json"]
    assert info_path(tmp_path / "val_seg_probs.npy") == tmp_path / "val_seg_probs.json"


def test_round_trip_is_a_plain_npy(tmp_path):
    npy, store, info = write_store(tmp_path, n=40)  # more than one write chunk
    mapped, read = read_store(npy)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, store) and read == info
    assert np.array_equal(np.load(npy, mmap_mode="r"), store)
    assert npy.stat().st_size == 40 * 4 * 350 * 525 + 128


def one_line(path):
    with pytest.raises(CloudpipeError) as info:
        read_store(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_store(tmp_path):
    npy, _, _ = write_store(tmp_path)
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 10)
    assert "truncated" in one_line(npy) and str(npy) in one_line(npy)


def test_wrong_magic(tmp_path):
    npy, _, _ = write_store(tmp_path)
    npy.write_bytes(b"not numpy at all" * 20)
    assert "not a probability store" in one_line(npy)


@pytest.mark.parametrize("array", [np.zeros((2, 4, 350, 525), np.float32), np.zeros((2, 4, 10, 10), np.uint8),
                                   np.asfortranarray(np.zeros((2, 4, 350, 525), np.uint8))])
def test_wrong_dtype_shape_or_order(tmp_path, array):
    npy, _, _ = write_store(tmp_path, n=2)
    np.save(npy, array)
    assert "not uint8 (n, 4, 350, 525)" in one_line(npy)


def test_image_list_mismatch_and_damage(tmp_path):
    npy, _, _ = write_store(tmp_path)
    meta = info_path(npy)
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "images": data["images"][:2]}))
    assert "names 2 images, the store holds 3" in one_line(npy)
    meta.write_text(json.dumps({**data, "images": ["a.jpg"] * 3}))
    assert "probability store: images: has duplicates (a.jpg), got ['a.jpg', 'a.jpg', 'a.jpg']" in one_line(npy)
    meta.write_text("{oops")
    assert "not a readable JSON" in one_line(npy)
    meta.unlink()
    assert "image list is missing" in one_line(npy)


def test_a_string_where_the_store_wants_a_list_is_refused(tmp_path):
    npy, _, _ = write_store(tmp_path, n=7)
    meta = info_path(npy)
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "images": "abcdefg"}))  # 7 characters: once read as 7 names
    assert f"{meta}: probability store: images: must be a JSON list of image names, got 'abcdefg'" in one_line(npy)


@pytest.mark.parametrize("bad, message", [
    ({"format": 2}, "format: must be 1 (a probability store's JSON of this cloudpipe), got 2"),
    ({"split": None}, "split: must be a split name, got None"),
    ({"images": [1, 2, 3]}, "images.0: must be a JSON list of image names, got 1"),
    ({"runs": "/runs/a"}, "runs: must be a JSON list of run folders, got '/runs/a'"),
    ({"weights": ["1.0"]}, "weights.0: must be a JSON list of numbers, one per run, got '1.0'"),
    ({"weights": [0.5, 0.5]}, "needs one weight and one fingerprint per run: 1 run(s), 2 weight(s), 1 fingerprint(s)"),
    ({"fingerprints": []}, "needs one weight and one fingerprint per run: 1 run(s), 1 weight(s), 0 fingerprint(s)"),
])
def test_a_garbled_store_json_is_refused_naming_the_field(tmp_path, bad, message):
    npy, _, _ = write_store(tmp_path)
    meta = info_path(npy)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **bad}))
    assert f"{meta}: probability store: {message}" in one_line(npy)


KILLED_MID_RUN = """
import os, signal, sys
from pathlib import Path
from cloudpipe.data.probstore import probability_store
store = probability_store(Path(sys.argv[1]), (3, 4, 350, 525))
store[:] = 7
print(len(os.listdir(sys.argv[1])), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_kill_9_leaves_no_probability_store(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    child = subprocess.run([sys.executable, "-c", KILLED_MID_RUN, str(folder)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "0"  # the 4 MB store already had no name while in use
    assert os.listdir(folder) == []


def test_full_disk_for_the_store_is_one_line(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CloudpipeError, match="No space left on device") as info:
        probability_store(tmp_path, (600, 4, 350, 525))
    assert str(tmp_path) in str(info.value) and os.listdir(tmp_path) == []


def test_a_store_of_no_images_is_refused(tmp_path, tiny_data):
    """tune-seg on it used to end in a numpy traceback."""
    from conftest import cli

    npy, _, _ = write_store(tmp_path, n=0, images=[])
    with pytest.raises(CloudpipeError, match="holds no images"):
        read_store(npy)
    result = cli("tune-seg", "--store", npy, "--data", tiny_data, "--out", tmp_path / "out" / "val.csv")
    assert result.exit_code == 2 and "holds no images" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_store_of_another_profiles_classes_is_refused_in_one_line(tmp_path):
    """A store written under a two-class profile records its classes; read under clouds (same array shape
    asked of it) it is refused for its classes, not read as Fish and Flower."""
    two = CLOUDS.model_copy(update={"name": "two", "classes": ("water", "land")})
    with use_profile(two):
        npy, meta = store_paths(tmp_path / "val_seg.csv")
        info = StoreInfo.of("val", ["a.jpg"], [], [])
        write_files({npy: array_writer(np.zeros((1, 2, 350, 525), np.uint8)), meta: info_writer(info)})
        assert json.loads(meta.read_text())["classes"] == ["water", "land"]
        assert read_store(npy)[0].shape == (1, 2, 350, 525)
    with pytest.raises(CloudpipeError, match=r"holds classes water, land, not the data's Fish, Flower, Gravel, Sugar"):
        read_store(npy)
