import os

import numpy as np
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import Inputs, lock_path
from cloudpipe.engine.runner import Plan, Runner


def test_one_process_predicts_the_whole_store():
    """Under torchrun the shares are joined (tests/test_segment.py runs two ranks); alone, the
    one call predicts every name."""
    seen = []

    def predict(mine):
        seen.extend(mine)
        return np.arange(len(mine)), None

    with Runner.start() as run:
        store, presence = run.predict_store(["a", "b", "c"], predict, None)
    assert seen == ["a", "b", "c"] and store.tolist() == [0, 1, 2] and presence is None


def test_claim_locks_every_output_until_the_command_ends(tmp_path):
    out, own, folder = tmp_path / "out.csv", tmp_path / "own.json", tmp_path / "run"
    own.write_text("{}")
    folder.mkdir()
    with Runner.start() as run:
        assert run.claim(lambda: (Plan(Inputs(), [out], replaces=[own], folders=[folder]), "value")) == "value"
        assert all(lock_path(p).exists() for p in (out, own, folder))
        run.write({out: lambda tmp: tmp.write_text("new"), own: lambda tmp: tmp.write_text("{1}")})
    assert not any(lock_path(p).exists() for p in (out, own, folder))
    assert out.read_text() == "new" and own.read_text() == "{1}"


def test_existing_outputs_need_overwrite_but_replaced_ones_do_not(tmp_path):
    out, own = tmp_path / "out.csv", tmp_path / "own.json"
    out.write_text("old")
    own.write_text("{}")
    with pytest.raises(CloudpipeError, match="already exists; pass --overwrite"), Runner.start() as run:
        run.claim(lambda: (Plan(Inputs(), [out], replaces=[own]), None))
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "own.json"] and out.read_text() == "old"  # no lock left
    with Runner.start() as run:
        run.claim(lambda: (Plan(Inputs(), [out], replaces=[own], overwrite=True), None))


def test_no_output_is_an_input_even_with_overwrite(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("x\n")
    with pytest.raises(CloudpipeError, match="also an input"), Runner.start() as run:
        run.claim(lambda: (Plan(Inputs.of(source), [source], overwrite=True), None))
    with pytest.raises(CloudpipeError, match="also an input"), Runner.start() as run:
        run.claim(lambda: (Plan(Inputs.of(source), replaces=[source]), None))
    assert source.read_text() == "x\n"


def test_a_second_command_on_the_same_output_is_refused_at_once(tmp_path):
    out = tmp_path / "out.csv"
    with Runner.start() as first:
        first.claim(lambda: (Plan(Inputs(), [out]), None))
        with pytest.raises(CloudpipeError, match=f"being written by another cloudpipe process \\(pid {os.getpid()}\\)"):
            with Runner.start() as second:
                second.claim(lambda: (Plan(Inputs(), [out]), None))


def test_only_declared_outputs_are_written(tmp_path):
    out = tmp_path / "out.csv"
    with Runner.start() as run:
        run.claim(lambda: (Plan(Inputs(), [out]), None))
        with pytest.raises(ValueError, match="not declared"):
            run.write({tmp_path / "other.csv": lambda tmp: tmp.write_text("x")})
    assert os.listdir(tmp_path) == []


def test_a_folder_is_built_whole_and_swapped_in_only_where_the_plan_says(tmp_path):
    out = tmp_path / "bundle"
    with Runner.start() as run:
        run.claim(lambda: (Plan(builds={out: "bundle"}), None))
        assert lock_path(out).exists()
        with pytest.raises(ValueError, match="not declared"):
            run.write_folder(tmp_path / "other", lambda folder: None)
        assert run.write_folder(out, lambda folder: (folder / "bundle.json").write_text("{}")) == 2
    assert sorted(os.listdir(tmp_path)) == ["bundle"] and sorted(os.listdir(out)) == [".cloudpipe", "bundle.json"]
    with pytest.raises(CloudpipeError, match="already exists; pass --overwrite"), Runner.start() as run:
        run.claim(lambda: (Plan(builds={out: "bundle"}), None))
    with pytest.raises(CloudpipeError, match="was not made by cloudpipe demo"), Runner.start() as run:
        run.claim(lambda: (Plan(builds={out: "demo"}, overwrite=True), None))
    with Runner.start() as run:
        run.claim(lambda: (Plan(builds={out: "bundle"}, overwrite=True), None))
        run.write_folder(out, lambda folder: (folder / "bundle.json").write_text("{\"new\": 1}"))
    assert (out / "bundle.json").read_text() == '{"new": 1}' and sorted(os.listdir(tmp_path)) == ["bundle"]
