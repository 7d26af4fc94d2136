"""The registry of presence sources: every command reads it, so a new source is one module."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cloudpipe.pipeline.sources as sources
from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.pipeline.gate import GateInputs
from cloudpipe.pipeline.sources import Source, SourceInput, register, registry, source_inputs


def test_the_packaged_sources_in_order():
    assert list(registry()) == ["classifier", "head", "max", "top_mean", "area"]
    assert list(source_inputs()) == ["presence", "seg_store"]
    assert registry()["classifier"].input is None and [s for s, v in registry().items() if v.pixel] == ["max", "top_mean", "area"]
    with pytest.raises(ValueError, match="registered twice"):
        register(registry()["head"])


@pytest.fixture()
def with_new_source(monkeypatch, tmp_path):
    """A source that needs an input no other source reads: registered as a module of the package would."""
    monkeypatch.setattr(sources, "_REGISTRY", dict(registry()))
    counts = tmp_path / "counts.csv"
    pd.DataFrame({"image": ["a.jpg", "b.jpg"], **{c: [0, 9] for c in CLASSES}}).to_csv(counts, index=False)

    def read(path, images, split):
        frame = pd.read_csv(path).set_index("image")
        return frame.loc[images, list(CLASSES)].to_numpy(np.float64)

    register(Source("blobs", "the share of blobs found", SourceInput("blob_counts", "--blob-counts", "blob counts", read),
                    lambda counts, pixel: counts / 10))
    return counts


def test_a_new_source_with_a_new_input_is_seen_by_the_gate_and_the_commands(with_new_source):
    inputs = GateInputs({"blob_counts": with_new_source})
    assert inputs.names() == ["classifier", "blobs"]
    np.testing.assert_allclose(inputs.scores(["b.jpg", "a.jpg"], ["blobs"], "val")["blobs"], [[0.9] * 4, [0.0] * 4])
    with pytest.raises(CloudpipeError, match="gating on blobs needs --blob-counts FILE"):
        GateInputs().require(["blobs"])
    assert with_new_source in inputs.reads().files
    import click

    from cloudpipe.cli import source_input_options  # the commands' options are made by it from the registry

    @click.command()
    @source_input_options("val")
    def command(gate_files):
        click.echo(sorted(gate_files))

    help_text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--blob-counts FILE Blob counts of the validation images: gate on blobs." in help_text
    assert CliRunner().invoke(command, ["--blob-counts", str(with_new_source)]).output == "['blob_counts']\n"
