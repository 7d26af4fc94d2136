"""A dataset's facts as a profile: classes, sizes, CSV layouts, RLE order.

Every module asks :func:`active` for them; the packaged ``clouds`` profile (Understanding
Clouds) is active unless a command, or a notebook with :func:`use_profile`, makes another one
active (``steel``, Severstal's defects, or a user's YAML file: see :mod:`cloudpipe.data.profiles`).
No other module names a class or a size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Size = tuple[Annotated[int, Field(ge=16, le=20_000)], Annotated[int, Field(ge=16, le=20_000)]]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s,/\\\x00\"']+$")]


class Layout(BaseModel):
    """A mask CSV's columns: either one ``key`` column ``<image>_<class>`` (split on the last
    underscore) or an ``image`` and a ``class`` column; the one other column holds the RLE.
    ``rows: present`` means pairs whose mask is empty may have no row (Severstal's train.csv)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    columns: tuple[Name, ...] = Field(description="must be the CSV's header, 2 or 3 distinct names")
    key: Name | None = Field(None, description="must be the column holding <image>_<class>")
    image: Name | None = Field(None, description="must be the column holding the image name")
    class_: Name | None = Field(None, alias="class", description="must be the column holding the class")
    rows: Literal["all", "present"] = Field("all", description="must be all (a row per pair) or present")

    @model_validator(mode="after")
    def _roles(self) -> Layout:
        named = [self.key] if self.key else [self.image, self.class_]
        if None in named or (self.key and (self.image or self.class_)):
            raise ValueError("give either key (one <image>_<class> column) or both image and class columns")
        if len(set(self.columns)) != len(self.columns) or len(self.columns) != len(named) + 1:
            raise ValueError(f"columns must be {len(named) + 1} distinct names: the named ones and the mask column")
        if not set(named) <= set(self.columns):
            raise ValueError(f"columns {list(self.columns)} lack {[n for n in named if n not in self.columns]}")
        return self

    @property
    def pixels(self) -> str:
        """The column holding the RLE text."""
        return next(c for c in self.columns if c not in (self.key, self.image, self.class_))


class Profile(BaseModel):
    """One dataset's facts (a profile YAML file, validated as every cloudpipe file is)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name = Field(description="must be a short name without spaces")
    classes: tuple[Name, ...] = Field(min_length=1, max_length=64,
                                      description="must be 1 to 64 distinct class names (no spaces or commas)")
    image_size: Size = Field(description="must be [height, width] of the images, 16 to 20000 each")
    submission_size: Size = Field(description="must be [height, width] of a submission's masks, 16 to 20000 each")
    train_csv: Layout = Field(description="must be the layout of train.csv")
    submission_csv: Layout = Field(description="must be the layout of a submission (and sample_submission.csv)")
    rle_order: Literal["column", "row"] = Field("column", description="must be column (down each column first) or row")
    kaggle_data: str | None = Field(None, max_length=200, pattern=r"^/kaggle/input/[\w.-]+$",
                                    description="must be the data's folder in a Kaggle notebook, /kaggle/input/<name>")

    @model_validator(mode="after")
    def _distinct(self) -> Profile:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {list(self.classes)}")
        if any("_" in c for c in self.classes):  # a pair is keyed <image>_<class> inside cloudpipe, split on the last _
            raise ValueError(f"class names may not hold '_' (e.g. sea-ice, not sea_ice), got {list(self.classes)}")
        return self

    @property
    def is_default(self) -> bool:
        """Whether this is the default profile, ``clouds``: what a data folder without a profile file,
        a run without one and a store without classes are."""
        return self == packaged(DEFAULT)

    def describe(self) -> str:
        """One line: name, classes and sizes (for messages)."""
        h, w = self.image_size
        return f"{self.name} ({', '.join(self.classes)}; {h}x{w} images)"


def split_label(key: str) -> tuple[str, str]:
    """Split ``"<image>_<class>"`` on the last underscore into ``(image, class)`` (no underscore: a ValueError)."""
    image, sep, cls = key.rpartition("_")
    if not sep or not image:
        raise ValueError(f"Image_Label {key!r} has no '<image>_<class>' form")
    return image, cls


def join_label(image: str, cls: str) -> str:
    """The ``<image>_<class>`` key of one (image, class) pair."""
    return f"{image}_{cls}"


_ACTIVE: ContextVar[Profile | None] = ContextVar("cloudpipe_profile", default=None)


def active() -> Profile:
    """The profile in force: the one :func:`use_profile` made active, else the packaged ``clouds``."""
    profile = _ACTIVE.get()
    return packaged(DEFAULT) if profile is None else profile


PACKAGED: tuple[str, ...] = ("clouds", "steel", "steel-v1")
"""The profiles shipped in ``cloudpipe/profiles/``."""
DEFAULT = "clouds"


@functools.cache
def packaged(name: str) -> Profile:
    """A packaged profile by name (:data:`PACKAGED`)."""
    import yaml

    text = resources.files("cloudpipe").joinpath("profiles", f"{name}.yaml").read_text()
    return Profile.model_validate(yaml.safe_load(text))


@contextmanager
def use_profile(profile: Profile) -> Iterator[Profile]:
    """Make ``profile`` active inside the ``with`` block (a command runs in one)."""
    token = _ACTIVE.set(profile)
    try:
        yield profile
    finally:
        _ACTIVE.reset(token)


def set_profile(profile: Profile) -> None:
    """Make ``profile`` active from now on, in this thread (a notebook's one line)."""
    _ACTIVE.set(profile)
