"""The gate as the commands see it: which tuned gate applies (one precedence for ``predict``
and ``report``), and :class:`GateInputs`, the presence inputs a gate reads besides the
classifier with the choices of ``tune-threshold``. The sources themselves are registered in
:mod:`cloudpipe.pipeline.sources`; blending them is :mod:`cloudpipe.algorithms.presence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.algorithms.gating import GateSpec
from cloudpipe.algorithms.presence import PixelStats
from cloudpipe.algorithms.thresholds import Placement, check_threshold
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.kaggle import frame_rows
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.runfolder import THRESHOLDS_JSON, read_json
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.sources import registry, source_inputs

SEGMENTATION_KEY = "segmentation"
"""The key of ``thresholds.json`` recording the segmentation runs of the store it was tuned on."""


@dataclass(frozen=True)
class GateInputs:
    """What a gate reads besides the classifier, and how ``tune-threshold`` searches it.

    Attributes:
        files: input name (:func:`~cloudpipe.pipeline.sources.source_inputs`) -> the file giving it.
        pixel: how pixel statistics are computed (tuning; ``predict`` uses the tuned file's).
        sources: the sources to try, in order (tuning; None: :meth:`names`).
        placement: where thresholds go (tuning; :class:`~cloudpipe.algorithms.thresholds.Sweep`).
        try_at_least_one: tuning: try the at-least-one-class rule (kept only if it helps).
        at_least_one: ``predict``: apply the rule or not, None as the thresholds file says.
    """

    files: Mapping[str, Path] = field(default_factory=dict)
    pixel: PixelStats = PixelStats()
    sources: Sequence[str] | None = None
    placement: Placement = "exact"
    try_at_least_one: bool = False
    at_least_one: bool | None = None

    def __post_init__(self):
        unknown = [k for k in self.files if k not in source_inputs()]
        if unknown:
            raise ValueError(f"unknown source input(s) {', '.join(unknown)}; known: {', '.join(source_inputs())}")
        object.__setattr__(self, "files", {k: Path(v) for k, v in self.files.items() if v is not None})

    def given(self, classifier: bool = True) -> dict[str, bool]:
        """Source -> whether its input is given."""
        return {name: classifier if s.input is None else s.input.name in self.files for name, s in registry().items()}

    def names(self) -> list[str]:
        """The sources to try: those asked for (an unknown one, or none, refused), else the
        classifier and those whose input is given."""
        if self.sources is not None:
            known = registry()
            unknown = [s for s in self.sources if s not in known]
            if unknown or not self.sources:
                raise CloudpipeError(f"unknown source(s) {', '.join(unknown) or '(none)'}; known: {', '.join(known)}")
            return list(dict.fromkeys(self.sources))
        return [s for s, given in self.given().items() if given]

    def require(self, sources: Sequence[str], classifier: bool = True) -> None:
        """Refuse ``sources`` whose input is not given, naming the options that give them."""
        given, known = self.given(classifier), registry()
        missing = [s for s in sources if not given[s]]
        if missing:
            options = sorted({"--run RUN" if known[s].input is None else f"{known[s].input.option} FILE ({known[s].input.what})"
                              for s in missing})
            raise CloudpipeError(f"gating on {', '.join(missing)} needs " + "; ".join(options))

    def reads(self) -> Inputs:
        """The files read, companions included (so that no output may replace them)."""
        return Inputs.of(*(p for name, file in self.files.items() for p in source_inputs()[name].files(file)))

    def scores(self, images: list[str], sources: Sequence[str], split: str, *, classifier: pd.DataFrame | None = None,
               pixel: PixelStats | None = None) -> dict[str, np.ndarray]:
        """The (n, 4) scores of each of ``sources`` for ``images`` (rows in that order), from
        the ``split`` (``val``, ``test``) inputs and ``classifier`` (probabilities by image); an
        input not given, of another split or lacking some of the images is refused."""
        self.require(sources, classifier is not None)
        known, read, out = registry(), {}, {}
        for name in sources:
            source = known[name]
            if source.input is None:
                out[name] = frame_rows(classifier, images, "the classifier's probabilities")
                continue
            if source.input.name not in read:  # each file read once for all its sources
                read[source.input.name] = source.input.read(self.files[source.input.name], images, split)
            out[name] = source.score(read[source.input.name], pixel or self.pixel)
        return out

    def recording(self, sources: Sequence[str] | None = None) -> str | None:
        """The first input given, of those ``sources`` read (None: every source), that records
        the segmentation runs it was made from (a probability store); None without one."""
        known = registry()
        inputs = [s.input for s in known.values()] if sources is None else [known[s].input for s in sources]
        return next((i.name for i in inputs if i is not None and i.runs is not None and i.name in self.files), None)

    def segmentation(self, sources: Sequence[str] | None = None) -> Ensemble | None:
        """The segmentation runs (and weights) of the :meth:`recording` input, None without one."""
        name = self.recording(sources)
        return None if name is None else source_inputs()[name].runs(self.files[name])


def load_gate(path: Path, ensemble: Ensemble | None = None, inputs: GateInputs | None = None) -> GateSpec:
    """Read a ``thresholds.json`` as the whole gate; with ``ensemble``, once it is checked to be
    tuned for those classifier runs (and weights) and, when it records segmentation runs and
    gates on an input ``inputs`` gives that records its own (a probability store), for those."""
    data = read_json(path, "thresholds")
    if ensemble is not None:
        ensemble.check_tuned_for(data, path, "thresholds")
    try:
        spec = GateSpec.from_json(data, tuple(registry()))
    except CloudpipeError as err:
        raise CloudpipeError(str(err), path=path) from None
    recorded = data.get(SEGMENTATION_KEY) if isinstance(data, dict) else None
    name = None if inputs is None else inputs.recording(spec.sources)
    if ensemble is not None and name is not None and recorded is not None:
        inputs.segmentation(spec.sources).check_tuned_for(recorded, path, f"thresholds' segmentation runs (against {inputs.files[name]})")
    return spec


Thresholds = Path | float | None
"""What a command is told to gate with: a ``thresholds.json`` (``--thresholds FILE``), one
threshold for every class on the classifier (``--thresholds T``), or None (the run's own file)."""


def resolve_gate(runs: Path | Ensemble | None, given: Thresholds = None,
                 inputs: GateInputs | None = None) -> tuple[GateSpec | None, str]:
    """The gate that applies and where it came from: ``given`` (a file, or one threshold on the
    classifier), else ``RUN_DIR/thresholds.json`` of one run (checked by :func:`load_gate`);
    ``(None, "")`` when neither is, for the caller's fallback (``predict``: 0.5 on the
    classifier; ``report``: tuned on the scored images).

    Raises:
        CloudpipeError: a threshold outside [0, 1], an ensemble without a file, or a file that
            :func:`load_gate` refuses.
    """
    ensemble = None if runs is None else runs if isinstance(runs, Ensemble) else Ensemble.of(runs)
    if isinstance(given, (int, float)):
        t = check_threshold(given, "--thresholds")
        return GateSpec({c: t for c in active().classes}), f"--thresholds {t:g}"
    if given is not None:
        thresholds_file = Path(given)
    elif ensemble is None:
        return None, ""
    else:
        thresholds_file = ensemble.own_file(THRESHOLDS_JSON, "an ensemble of classifier runs needs --thresholds FILE "
                                            "(tune-threshold with the same --run and --ensemble-weight options and --out FILE) "
                                            "or --thresholds T")
        if not thresholds_file.is_file():
            return None, ""
    return load_gate(thresholds_file, ensemble, inputs), str(thresholds_file)
