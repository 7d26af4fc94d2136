"""The packaged YAML defaults (read with importlib.resources)."""

DEFAULT_CONFIGS: dict[str, str] = {"classifier": "classifier.yaml", "segmentation": "seg.yaml"}
"""The defaults file of each stage's config."""
