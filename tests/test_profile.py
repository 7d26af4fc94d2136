"""The competition's facts: class order, shapes, Image_Label split on the last underscore."""

from __future__ import annotations

import pytest

from cloudpipe.core.profile import join_label, split_label


def test_labels_split_on_the_last_underscore():
    assert split_label("0011165.jpg_Fish") == ("0011165.jpg", "Fish")
    assert split_label("my_image_v2.jpg_Sugar") == ("my_image_v2.jpg", "Sugar")
    assert join_label(*split_label("a_b.jpg_Gravel")) == "a_b.jpg_Gravel"
    for bad in ("nounderscore", "_Fish"):
        with pytest.raises(ValueError):
            split_label(bad)
