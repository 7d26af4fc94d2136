"""The packaged YAML defaults (read with importlib.resources)."""

from __future__ import annotations

from importlib import resources

DEFAULT_CONFIGS: dict[str, str] = {"classifier": "classifier.yaml", "segmentation": "seg.yaml"}
"""The defaults file of each stage's config."""


def read_packaged(name: str) -> dict:
    """A packaged YAML file of this folder (e.g. ``seg.yaml``, ``demo.yaml``) as a mapping."""
    import yaml

    return yaml.safe_load(resources.files(__name__).joinpath(name).read_text())
