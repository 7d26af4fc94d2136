"""A dataset's facts as a profile: the packaged ones, what a profile file must hold, the active profile,
and ``<image>_<class>`` keys split on the last underscore."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from cloudpipe.core.profile import PACKAGED, Profile, active, join_label, packaged, set_profile, split_label, use_profile


def test_labels_split_on_the_last_underscore():
    assert split_label("0011165.jpg_Fish") == ("0011165.jpg", "Fish")
    assert split_label("my_image_v2.jpg_Sugar") == ("my_image_v2.jpg", "Sugar")
    assert join_label(*split_label("a_b.jpg_Gravel")) == "a_b.jpg_Gravel"
    for bad in ("nounderscore", "_Fish"):
        with pytest.raises(ValueError):
            split_label(bad)


def test_the_packaged_profiles_hold_the_competitions_facts():
    clouds, steel = packaged("clouds"), packaged("steel")
    assert PACKAGED == ("clouds", "steel", "steel-v1") and active() == clouds
    assert clouds.is_default and not steel.is_default
    assert clouds.classes == ("Fish", "Flower", "Gravel", "Sugar")
    assert (clouds.image_size, clouds.submission_size, clouds.rle_order) == ((1400, 2100), (350, 525), "column")
    assert clouds.train_csv.key == clouds.submission_csv.key == "Image_Label" and clouds.train_csv.pixels == "EncodedPixels"
    assert steel.classes == ("1", "2", "3", "4") and steel.image_size == steel.submission_size == (256, 1600)
    assert steel.train_csv.columns == ("ImageId", "ClassId", "EncodedPixels") and steel.train_csv.rows == "present"
    assert steel.submission_csv.columns == ("ImageId", "EncodedPixels", "ClassId") and steel.submission_csv.rows == "all"
    assert (steel.submission_csv.image, steel.submission_csv.class_, steel.submission_csv.pixels) == (
        "ImageId", "ClassId", "EncodedPixels")
    first = packaged("steel-v1")  # the first release: steel's facts, clouds' kind of layout
    assert first.model_dump(exclude={"name", "train_csv", "submission_csv"}) == steel.model_dump(exclude={
        "name", "train_csv", "submission_csv"}) and first.train_csv == first.submission_csv
    assert (first.train_csv.key, first.train_csv.rows) == ("ImageId_ClassId", "all")


def base(**changes) -> dict:
    values = packaged("clouds").model_dump(by_alias=True)
    values.update(changes)
    return values


@pytest.mark.parametrize("changes, message", [
    ({"classes": ["a", "a"]}, "classes must be distinct"),
    ({"classes": []}, "classes"),
    ({"classes": ["a b"]}, "classes"),
    ({"classes": ["sea_ice"]}, "may not hold '_'"),
    ({"image_size": [8, 100]}, "image_size"),
    ({"rle_order": "diagonal"}, "rle_order"),
    ({"colour": "blue"}, "colour"),
    ({"train_csv": {"columns": ["Image_Label", "EncodedPixels"], "key": "Image_Label", "image": "Image_Label"}},
     "either key"),
    ({"train_csv": {"columns": ["ImageId", "EncodedPixels"], "image": "ImageId", "class": "ClassId"}}, "columns must be 3"),
    ({"train_csv": {"columns": ["ImageId", "Cls", "EncodedPixels"], "image": "ImageId", "class": "ClassId"}}, "lack"),
    ({"submission_csv": {"columns": ["Image_Label", "EncodedPixels"], "key": "Image_Label", "rows": "some"}}, "rows"),
])
def test_a_profile_that_cannot_hold_is_refused(changes, message):
    with pytest.raises(ValidationError, match=message):
        Profile.model_validate(base(**changes))


def test_a_profile_is_active_inside_its_block_and_per_thread():
    steel = packaged("steel")
    with use_profile(steel):
        assert active() == steel
        seen = []
        thread = threading.Thread(target=lambda: seen.append(active()))
        thread.start()
        thread.join()
        assert seen == [packaged("clouds")]  # another thread keeps the default
    assert active() == packaged("clouds")
    with use_profile(packaged("clouds")):
        set_profile(steel)
        assert active() == steel
    assert active() == packaged("clouds")  # the block's exit undoes what set_profile did inside it
