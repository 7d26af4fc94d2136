"""The names and defaults the commands offer, in a module without numpy so that ``cloudpipe
--help`` stays instant. The code that implements each choice imports it from here (the robust
rule, threshold placement, post-processing steps, pixel statistics, devices)."""

from __future__ import annotations

from typing import Final, Literal

Rule = Literal["best", "robust"]
RULES: Final[tuple[str, ...]] = ("best", "robust")
"""How tuned values are chosen (:mod:`cloudpipe.algorithms.robust`)."""
DEFAULT_RULE: Final[Rule] = "robust"

Placement = Literal["exact", "midpoint"]
PLACEMENTS: Final[tuple[str, ...]] = ("exact", "midpoint")
"""Where a threshold goes between two candidate probabilities (:class:`~cloudpipe.algorithms.thresholds.Sweep`)."""

STEP_NAMES: Final[tuple[str, ...]] = ("threshold", "top_area", "min_size", "shape")
"""The post-processing steps (:data:`cloudpipe.algorithms.postprocess.STEPS`), in the order listed."""
DEFAULT_STEPS: Final[tuple[str, ...]] = ("threshold", "min_size", "shape")
"""The steps tuned by default (shape: measured on clouds350, see benchmarks/README.md)."""

TOP_K: Final[int] = 18000
"""Pixels averaged by the ``top_mean`` presence statistic at 350 x 525 (the 1st place's figure)."""
AREA_THRESHOLD: Final[float] = 0.5
"""Pixel probability counted by the ``area`` presence statistic."""

DEVICES: Final[tuple[str, ...]] = ("auto", "cpu", "cuda")
"""Where models run: ``auto`` is CUDA when available."""

MAX_WORKERS: Final[int] = 256
"""The most DataLoader worker processes a setting may ask for (one per core of the largest machines)."""
