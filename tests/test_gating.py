"""Gating: blank exactly the pairs below their class threshold, leave every other mask as is."""

from __future__ import annotations

import pandas as pd

from cloudpipe.algorithms.gating import gate
from cloudpipe.core.competition import CLASSES


def test_gate_blanks_exactly_below_threshold():
    seg = pd.DataFrame({"Image_Label": [f"a.jpg_{c}" for c in CLASSES], "EncodedPixels": ["1 2", "3 4", "", "9 1"],
                        "image": "a.jpg", "class_name": list(CLASSES)})
    probs = pd.DataFrame([[0.2, 0.5, 0.9, 0.49]], index=["a.jpg"], columns=list(CLASSES))
    out = gate(seg, probs, {c: 0.5 for c in CLASSES})
    assert list(out["EncodedPixels"]) == ["", "3 4", "", ""]
    assert list(out["absent"]) == [True, False, False, True]
    assert list(out["blanked"]) == [True, False, False, True]
    empty_below = seg.assign(EncodedPixels=["", "3 4", "", "9 1"])
    assert list(gate(empty_below, probs, {c: 0.5 for c in CLASSES})["blanked"]) == [False, False, False, True]
