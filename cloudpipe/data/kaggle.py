"""Kaggle CSVs and the data folder: reading, validation, presence labels, splits.

A mask CSV (``train.csv``, ``sample_submission.csv``, any submission) is in one of the active
profile's layouts (:class:`~cloudpipe.core.profile.Layout`, picked by its header); it is read
into a "long" frame that keeps the file's row order and its exact mask strings, with the parsed
``image`` and ``class_name`` beside them (:data:`LABEL_COLUMNS` first, whatever the layout).
The frame's index is each row's place in the file (line - 2); the pairs a ``rows: present``
file leaves out follow as empty masks. :func:`to_layout` turns a long frame back into a
layout's rows, :func:`to_wide` into one row per image and one column per class. Error messages
name the file and its line (the header is line 1).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.core.errors import CloudpipeError, RLEError
from cloudpipe.core.profile import Layout, active, join_label, split_label
from cloudpipe.core.rle import check_shape, parse_rle
from cloudpipe.data.images import check_images
from cloudpipe.data.outputs import Inputs, check_output, write_csv
from cloudpipe.data.profiles import require_active
from cloudpipe.data.runfolder import PROFILE_YAML

TRAIN_CSV = "train.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
PSEUDO_CSV = "pseudo_labels.csv"
"""In a data folder made by ``cloudpipe pseudo-label``: the training images whose labels are
pseudo-labels (``image`` and the probabilities they were chosen on); they never validate."""
LABEL_COLUMNS: tuple[str, str] = ("Image_Label", "EncodedPixels")
"""The columns of a mask frame inside cloudpipe (pairs keyed `<image>_<class>`), whatever the layout of the CSV it came from."""
NOT_PLAIN = re.compile(r"^\.{0,2}\Z|[/\\\x00]")
"""What makes an image name no plain file name: empty, ``.``, ``..``, or a ``/``, ``\\`` or NUL in
it (``../x.jpg`` or ``/etc/x.jpg`` would read outside the images folder)."""


def read_csv_text(path: Path, columns: tuple[str, ...], *others: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as text (empty cells stay ``""``) and check it has exactly ``columns`` (or one of ``others``).

    Row ``i`` of the frame is line ``i + 2`` of the file: blank lines between rows (which pandas
    would skip, shifting every later line number) and cells spanning several lines are refused;
    blank lines at the end of the file are ignored. A refusal is one CloudpipeError naming the file (and line).
    """
    path = Path(path)
    headers = list(dict.fromkeys(tuple(c) for c in (columns, *others)))
    expected = " or ".join(",".join(c) for c in headers)
    if not path.is_file():
        raise CloudpipeError("file not found", path=path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise CloudpipeError(f"file is empty (expected a header {expected})", path=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CloudpipeError(f"not a readable CSV ({str(err).strip().splitlines()[-1]})", path=path) from None
    if tuple(frame.columns) not in headers:
        raise CloudpipeError(f"columns are {','.join(map(str, frame.columns))}; expected {expected}", path=path, line=1)
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas silently turns the first column into the index when the first data row has
        # more fields than the header; every column would then be shifted by one.
        raise CloudpipeError(
            f"the first row has more fields than the header's {len(frame.columns)}", path=path, line=2
        )
    blank = (frame == "").all(axis=1).to_numpy()
    rows = len(blank) - int(np.argmin(blank[::-1])) if not blank.all() else 0  # blank lines at the end are harmless
    frame, blank = frame.iloc[:rows], blank[:rows]
    if frame.empty:
        raise CloudpipeError("has a header but no rows", path=path)
    if blank.any():
        raise CloudpipeError("blank line (or only empty fields)", path=path, line=int(np.argmax(blank)) + 2)
    multiline = frame.apply(lambda column: column.str.contains("[\r\n]")).any(axis=1).to_numpy()
    if multiline.any():
        raise CloudpipeError("a quoted cell spans several lines", path=path, line=int(np.argmax(multiline)) + 2)
    return frame


def _refuse_duplicates(values: pd.Series, what: str, path: Path | str) -> None:
    """Refuse the first value of a CSV's column (in file order) that repeats an earlier one, naming its line."""
    duplicated = values.duplicated().to_numpy()
    if duplicated.any():
        i = int(np.argmax(duplicated))
        raise CloudpipeError(f"duplicate {what} {values.iat[i]!r}", path=path, line=i + 2)


def require_plain_image_names(names: pd.Series, path: Path | str) -> None:
    """Refuse an image name from a CSV that is not a plain file name (:data:`NOT_PLAIN`), naming
    its line (``names`` in file order, the header being line 1)."""
    bad = names.str.contains(NOT_PLAIN).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise CloudpipeError(f"image name {names.iat[i]!r} is not a plain file name", path=path, line=i + 2)


INTERNAL_LAYOUT = Layout(columns=LABEL_COLUMNS, key=LABEL_COLUMNS[0])
"""The layout of a mask frame inside cloudpipe (and of a DataFrame handed to the library)."""


def mask_layouts() -> list[Layout]:
    """The layouts a mask CSV of the active profile may have, told apart by header:
    ``train.csv``'s, then a submission's unless its header is the same (``train.csv``'s rows rule then holds)."""
    profile = active()
    train, submission = profile.train_csv, profile.submission_csv
    return [train] if submission.columns == train.columns else [train, submission]


def read_layout_text(path: Path) -> tuple[pd.DataFrame, Layout]:
    """A mask CSV as text in its own columns (:func:`read_csv_text`), and the layout of the
    active profile its header is (:func:`mask_layouts`); any other header is refused."""
    layouts = mask_layouts()
    text = read_csv_text(path, *(layout.columns for layout in layouts))
    return text, next(layout for layout in layouts if layout.columns == tuple(text.columns))


def read_mask_csv(path: Path, *, shape: tuple[int, int] | None = None) -> pd.DataFrame:
    """Read and validate a mask CSV in one of the active profile's layouts (``Image_Label,EncodedPixels``
    for clouds) into columns ``Image_Label, EncodedPixels, image, class_name`` in file order; with
    ``shape`` (H, W), every RLE string is validated for masks of that size. A ``rows: present``
    file's images get every class, in class order (an empty mask where it has no row).

    Raises:
        CloudpipeError: wrong columns, no rows, a label without ``_``, an image name that is
            not a plain file name, an unknown class, a pair given twice, an image without all
            classes (``rows: all``), or (with ``shape``) bad RLE; naming the file's line.
    """
    return _completed(*_read_rows(path, shape))


def _read_rows(path: Path, shape: tuple[int, int] | None) -> tuple[pd.DataFrame, Layout]:
    """The rows of a mask CSV as a validated long frame in file order (not completed), and its layout."""
    text, layout = read_layout_text(path)
    return layout_frame(text, layout, path, shape=shape), layout


def _completed(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """``frame`` read in ``layout``, with every pair of its images (:func:`complete_pairs`) where
    the layout may leave empty masks out."""
    return complete_pairs(frame, pd.unique(frame["image"]).tolist()) if layout.rows == "present" else frame


def mask_rows(path: Path, *, classes: bool = True) -> tuple[pd.DataFrame, pd.Series]:
    """A mask CSV's rows as text in its own columns, and the image of each row, validated as
    :func:`read_mask_csv` validates them. With ``classes=False`` a file of an image and a class
    column is read by its image column alone (plain names): Severstal's ``sample_submission.csv``
    has one row per image, of class 0."""
    text, layout = read_layout_text(path)
    if classes or layout.key:
        return text, layout_frame(text, layout, path)["image"]
    require_plain_image_names(text[layout.image], path)
    return text, text[layout.image]


def layout_frame(text: pd.DataFrame, layout: Layout, path: Path | str, *,
                 shape: tuple[int, int] | None = None) -> pd.DataFrame:
    """The long frame of a text frame in ``layout``'s columns, rows in its order (a ``rows:
    present`` one not completed: :func:`complete_pairs`), validated as :func:`read_mask_csv`
    says, in file order; ``path`` names it in errors, lines counted as in its CSV."""
    if shape is not None:
        shape = check_shape(shape)  # (-1, -1) would pass a CSV of empty masks unchecked
    if text.empty:
        raise CloudpipeError("has no rows", path=path)
    text = text.reset_index(drop=True)
    classes = active().classes
    if layout.key:
        parts = []
        for i, label in enumerate(text[layout.key].tolist()):
            try:
                image, cls = split_label(label)
            except ValueError as err:
                raise CloudpipeError(str(err), path=path, line=i + 2) from None
            if cls not in classes:
                raise CloudpipeError(
                    f"unknown class {cls!r} in {label!r} (classes: {', '.join(classes)})", path=path, line=i + 2
                )
            parts.append((image, cls))
        labels = text[layout.key]
    else:
        parts = list(zip(text[layout.image].tolist(), text[layout.class_].tolist()))
        known = set(classes)
        for i, (image, cls) in enumerate(parts):
            if cls not in known:
                raise CloudpipeError(f"unknown class {cls!r} of image {image!r} in column {layout.class_} "
                                     f"(classes: {', '.join(classes)})", path=path, line=i + 2)
        labels = pd.Series([join_label(image, cls) for image, cls in parts], dtype=object)
    frame = pd.DataFrame({LABEL_COLUMNS[0]: labels, LABEL_COLUMNS[1]: text[layout.pixels],
                          "image": [p[0] for p in parts], "class_name": [p[1] for p in parts]})
    require_plain_image_names(frame["image"], path)
    if layout.key:
        _refuse_duplicates(frame[LABEL_COLUMNS[0]], layout.key, path)
    else:
        _refuse_duplicates(pd.Series(parts), f"{layout.image},{layout.class_} pair", path)
    if layout.rows == "all":
        _require_every_class(frame, path)
    if shape is not None:
        validate_rle_column(frame, shape, path)
    return frame


def _require_every_class(frame: pd.DataFrame, path: Path | str) -> None:
    """Refuse a long frame in which an image lacks a row for some class."""
    classes = active().classes
    counts = frame.groupby("image", sort=False).size()
    incomplete = counts[counts != len(classes)]
    if len(incomplete):
        image = incomplete.index[0]
        have = frame.loc[frame["image"] == image, "class_name"].tolist()
        missing = [c for c in classes if c not in have]
        raise CloudpipeError(
            f"image {image!r} lacks rows for {', '.join(missing)} "
            f"({len(incomplete)} image(s) without all {len(classes)} classes)",
            path=path,
        )


def complete_pairs(frame: pd.DataFrame, images: list[str]) -> pd.DataFrame:
    """The long frame of every pair of ``images`` (in that order, classes in class order): the
    row of ``frame`` (its index kept) where it has one, else an empty mask (indexed after them)."""
    classes = list(active().classes)
    image = np.repeat(np.array(images, dtype=object), len(classes))
    cls = np.tile(np.array(classes, dtype=object), len(images))
    where = pd.Series(np.arange(len(frame)), index=pd.MultiIndex.from_arrays([frame["image"], frame["class_name"]]))
    at = where.reindex(pd.MultiIndex.from_arrays([image, cls])).to_numpy()
    have = ~np.isnan(at)
    take = at[have].astype(np.int64)
    rles = np.full(len(image), "", dtype=object)
    rles[have] = frame[LABEL_COLUMNS[1]].to_numpy()[take]
    index = np.empty(len(image), np.int64)
    index[have] = frame.index.to_numpy()[take]
    index[~have] = (int(frame.index.max()) + 1 if len(frame) else 0) + np.arange(int((~have).sum()))
    return pd.DataFrame({LABEL_COLUMNS[0]: [join_label(i, c) for i, c in zip(image, cls)], LABEL_COLUMNS[1]: rles,
                         "image": image, "class_name": cls}, index=index)


def mask_frame_of(frame: pd.DataFrame, what: str, *, shape: tuple[int, int] | None = None) -> pd.DataFrame:
    """A DataFrame with ``Image_Label, EncodedPixels`` (or the columns of one of the active
    profile's layouts; other columns ignored, NaN as empty) checked as :func:`read_mask_csv`
    checks a file; ``what`` names it in errors."""
    layout = next((la for la in (INTERNAL_LAYOUT, *mask_layouts()) if set(la.columns) <= set(frame.columns)), None)
    if layout is None:
        missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
        raise CloudpipeError(f"{what} lacks column(s) {', '.join(missing)}")
    return _completed(layout_frame(frame[list(layout.columns)].fillna("").astype(str), layout, what, shape=shape), layout)


def to_layout(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """A long mask frame (``Image_Label, EncodedPixels, image, class_name``) as the rows of a CSV
    in ``layout``: its columns in its order (a key layout's key is ``Image_Label``), rows in the
    frame's order, those of empty masks left out when ``layout.rows`` is ``present``."""
    if layout.rows == "present":
        frame = frame[frame[LABEL_COLUMNS[1]] != ""]
    source = {layout.key: LABEL_COLUMNS[0], layout.image: "image", layout.class_: "class_name",
              layout.pixels: LABEL_COLUMNS[1]}
    return pd.DataFrame({c: frame[source[c]].to_numpy() for c in layout.columns})


def write_submission(frame: pd.DataFrame, path: Path, *, shape: tuple[int, int] | None = None,
                     overwrite: bool = False) -> Path:
    """Write a Kaggle submission CSV in the active profile's submission layout (``Image_Label,
    EncodedPixels`` for clouds; rows in ``frame``'s order) atomically, once every row is checked
    (:func:`mask_frame_of`: each pair once, every RLE valid at ``shape``); an existing file is
    replaced only with ``overwrite``. A bad row, or a path that may not be written, is a CloudpipeError."""
    shape = shape or active().submission_size
    rows = to_layout(mask_frame_of(frame, "submission DataFrame", shape=shape), active().submission_csv)
    check_output(Path(path), overwrite=overwrite)
    write_csv(rows, Path(path))
    return Path(path)


def validate_rle_column(frame: pd.DataFrame, shape: tuple[int, int], path: Path) -> None:
    """Check every ``EncodedPixels`` of a long frame is valid RLE for masks of ``shape`` (an
    error names the file's line of the row, its index + 2: right after a present-only file's completion too)."""
    for i, rle in enumerate(frame["EncodedPixels"].tolist()):
        if rle:
            try:
                parse_rle(rle, shape)
            except RLEError as err:
                raise CloudpipeError(
                    f"{frame['Image_Label'].iat[i]}: {err} (masks are {shape[0]}x{shape[1]})",
                    path=path,
                    line=int(frame.index[i]) + 2,
                ) from None


def to_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Long mask frame -> one row per image (first-appearance order), one RLE column per class."""
    wide = frame.pivot(index="image", columns="class_name", values="EncodedPixels")
    order = pd.unique(frame["image"])
    return wide.loc[order, list(active().classes)].rename_axis(index="image", columns=None)


def presence(frame: pd.DataFrame) -> pd.DataFrame:
    """Presence labels from the CSV text: 1 where ``EncodedPixels`` is non-empty (no decoding),
    as an int64 frame indexed by image, columns in class order."""
    wide = to_wide(frame)
    return (wide.apply(lambda col: col.str.strip() != "")).astype(np.int64)


def read_train(data_dir: Path) -> pd.DataFrame:
    """``DIR/train.csv`` as a validated long frame (RLE checked later, at the image size). A
    ``rows: present`` file (Severstal's lists only images with a defect) holds the images named
    ``DIR/train_images/*.jpg``, sorted, each with every class: an empty mask where it has no row."""
    data_dir = require_dir(data_dir)
    require_active(data_dir)
    frame, layout = _read_rows(data_dir / TRAIN_CSV, None)
    if layout.rows == "all":
        return frame
    images = train_image_names(data_dir)
    have = set(images)
    unknown = [i for i in pd.unique(frame["image"]) if i not in have]
    if unknown:
        raise CloudpipeError(f"lists image {unknown[0]!r}, which is not in {TRAIN_IMAGES}/ ({len(unknown)} such)",
                             path=data_dir / TRAIN_CSV)
    return complete_pairs(frame, images)


def train_image_names(data_dir: Path) -> list[str]:
    """The sorted names of ``DIR/train_images/*.jpg`` (none, or no folder: a CloudpipeError)."""
    folder = Path(data_dir) / TRAIN_IMAGES
    names = sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if not names:
        raise CloudpipeError("no .jpg images" if folder.is_dir() else "folder not found", path=folder)
    return names


def data_inputs(data_dir: Path) -> Inputs:
    """What a command reading the data folder reads: ``train.csv``, ``sample_submission.csv``,
    ``profile.yaml`` and the image folders (no output may replace or lie in them)."""
    data_dir = Path(data_dir)
    return Inputs.of(data_dir / TRAIN_CSV, data_dir / SAMPLE_SUBMISSION_CSV, data_dir / PROFILE_YAML,
                     folders=[data_dir / TRAIN_IMAGES, data_dir / TEST_IMAGES])


def train_image_shape(data_dir: Path) -> tuple[int, int]:
    """The (H, W) of a data folder's training images, the size ``train.csv``'s masks are at
    (:func:`~cloudpipe.data.images.check_images`, the folder named)."""
    folder = Path(data_dir) / TRAIN_IMAGES
    try:
        return check_images(sorted(folder.glob("*.jpg")))
    except CloudpipeError as err:
        raise CloudpipeError(str(err).removeprefix(f"{folder}: "), path=folder) from None


def require_dir(path: Path) -> Path:
    """``path`` as a Path, or a CloudpipeError when it is not an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise CloudpipeError("folder not found", path=path)
    return path


def find_image(data_dir: Path, image: str) -> Path:
    """The file of a train or test image: ``DIR/train_images/<image>`` or ``DIR/test_images/<image>``.

    Raises:
        CloudpipeError: not a plain file name (``../train.csv``, ``/etc/x.jpg``), or in
            neither folder.
    """
    if NOT_PLAIN.search(image):
        raise CloudpipeError(f"image name {image!r} is not a plain file name (e.g. 0011165.jpg)")
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        path = Path(data_dir) / folder / image
        if path.is_file():
            return path
    raise CloudpipeError(f"image {image!r} is in neither {TRAIN_IMAGES}/ nor {TEST_IMAGES}/", path=data_dir)


def list_test_images(data_dir: Path) -> list[str]:
    """The test images in official order: from ``sample_submission.csv`` when present (each once,
    in first-appearance order; a file of image and class columns by its image column alone,
    :func:`mask_rows`), else the sorted names in ``DIR/test_images/``."""
    data_dir = require_dir(data_dir)
    require_active(data_dir)
    sample = data_dir / SAMPLE_SUBMISSION_CSV
    if sample.exists():
        return pd.unique(mask_rows(sample, classes=False)[1]).tolist()
    folder = data_dir / TEST_IMAGES
    if not folder.is_dir():
        raise CloudpipeError(f"neither {SAMPLE_SUBMISSION_CSV} nor {TEST_IMAGES}/ found", path=data_dir)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    if not names:
        raise CloudpipeError("no .jpg images", path=folder)
    return names


def _strata(labels: pd.DataFrame, min_count: int, max_strata: int) -> np.ndarray:
    """Number of classes present per image; the smallest strata are merged into their nearest
    neighbour until each has ``min_count`` images and there are at most ``max_strata``, so
    stratification also works on small data (the real data never needs a merge)."""
    strata = labels.sum(axis=1).to_numpy().copy()
    while True:
        values, counts = np.unique(strata, return_counts=True)
        if len(values) <= 1 or (counts.min() >= min_count and len(values) <= max_strata):
            return strata
        small = values[np.argmin(counts)]
        others = values[values != small]
        strata[strata == small] = others[np.argmin(np.abs(others - small))]


def split_train_val(
    labels: pd.DataFrame, val_fraction: float = 0.1, seed: int = 69
) -> tuple[list[str], list[str]]:
    """The seed's hold-out split of ``labels``' images (:func:`presence`), stratified by number
    of classes present: (train images, validation images)."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise CloudpipeError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    if len(labels) < 2:
        raise CloudpipeError(f"need at least 2 images to hold some out for validation, got {len(labels)}")
    images = labels.index.to_numpy()
    n_val = min(len(images) - 1, max(1, int(np.ceil(val_fraction * len(images)))))
    # sklearn needs two images per stratum and a validation image per stratum.
    strata = _strata(labels, 2, min(n_val, len(images) - n_val))
    train, val = train_test_split(images, test_size=n_val, random_state=seed, stratify=strata)
    return list(train), list(val)


def check_folds(folds: int, images: int) -> None:
    """Refuse a number of folds that is not between 2 and the number of ``images`` (before any
    fold's folder is named: a count of 10^8 would name 10^8 of them), in one line with the
    range and the value."""
    if folds < 2 or folds > images:
        raise CloudpipeError(f"--folds must be between 2 and the number of images ({images}), got {folds}")


def kfold_splits(labels: pd.DataFrame, folds: int, seed: int = 69) -> list[tuple[list[str], list[str]]]:
    """K folds stratified like :func:`split_train_val`: ``folds`` pairs of (train images,
    validation images), every image in exactly one fold's validation part."""
    from sklearn.model_selection import StratifiedKFold

    check_folds(folds, len(labels))
    images = labels.index.to_numpy()
    strata = _strata(labels, folds, len(images))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(list(images[tr]), list(images[va])) for tr, va in splitter.split(images, strata)]


@dataclass
class TrainData:
    """The training folder, read and checked once: labels, masks, image paths and size."""

    data_dir: Path
    labels: pd.DataFrame  # presence, indexed by image
    rles: pd.DataFrame  # RLE text, indexed by image, class columns
    image_shape: tuple[int, int]
    pseudo: tuple[str, ...] = ()
    """Pseudo-labelled training images (:data:`PSEUDO_CSV`): they train, never validate."""

    @property
    def labelled(self) -> list[str]:
        """The training images with real labels, in ``train.csv`` order (those that may validate)."""
        pseudo = set(self.pseudo)
        return [image for image in self.labels.index if image not in pseudo]

    def paths(self, images: list[str]) -> list[Path]:
        return [self.data_dir / TRAIN_IMAGES / name for name in images]


def load_train_data(data_dir: Path) -> TrainData:
    """Read ``train.csv`` and check, before any training starts, every training image's header
    (exists, JPEG, complete, one common size) and every mask's RLE for that size (parsed, not
    decoded: a bad mask would otherwise surface only after training, at ``tune-threshold``),
    and the pseudo-labelled images :data:`PSEUDO_CSV` names, if any (training images all).
    """
    data_dir = require_dir(data_dir)
    frame = read_train(data_dir)
    wide = to_wide(frame)
    shape = check_images(data_dir / TRAIN_IMAGES / name for name in wide.index)
    validate_rle_column(frame, shape, data_dir / TRAIN_CSV)
    pseudo: tuple[str, ...] = ()
    if (data_dir / PSEUDO_CSV).exists():
        pseudo = tuple(read_probs_csv(data_dir / PSEUDO_CSV).index)
        unknown = [image for image in pseudo if image not in wide.index]
        if unknown:
            raise CloudpipeError(f"names {unknown[0]}, which is not a training image of {TRAIN_CSV}", path=data_dir / PSEUDO_CSV)
        if len(pseudo) == len(wide):
            raise CloudpipeError("names every training image; some must keep real labels to validate on",
                                 path=data_dir / PSEUDO_CSV)
    return TrainData(data_dir, presence(frame), wide, shape, pseudo)


def require_images(images: Iterable[str], have: Container[str], holder: str = "", of: str = "", *,
                   path: Path | None = None, hint: str = "") -> None:
    """The one "lacks N images" check: when ``have`` lacks some of ``images``, a CloudpipeError
    ``<holder> lacks N image(s) of <of> (e.g. a, b, c)<hint>`` naming ``path`` (``holder``: what
    lacks them, empty when ``path`` says it; ``of``: whose images they are; ``hint``: what to do)."""
    missing = [i for i in images if i not in have]
    if missing:
        whose = f" of {of}" if of else ""
        raise CloudpipeError(f"{holder + ' ' if holder else ''}lacks {len(missing)} image(s){whose} "
                             f"(e.g. {', '.join(missing[:3])}){hint}", path=path)


def frame_rows(frame: pd.DataFrame, images: list[str], what: str) -> np.ndarray:
    """The (n, 4) class columns of a frame indexed by image, rows in ``images`` order
    (:func:`require_images` of ``what``)."""
    require_images(images, frame.index, what)
    return frame.loc[images, list(active().classes)].to_numpy(np.float64)


def require_same_images(expected: list[str], got: list[str], what: str, hint: str = "") -> None:
    """Raise a one-line error listing missing and extra images when two image sets differ, with
    ``hint`` (what to do) appended."""
    got_set, expected_set = set(got), set(expected)
    missing = [i for i in expected if i not in got_set]
    extra = [i for i in got if i not in expected_set]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} image(s) (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"has {len(extra)} extra image(s) (e.g. {', '.join(extra[:3])})")
        raise CloudpipeError(f"{what} " + " and ".join(parts) + hint)


def read_probs_csv(path: Path) -> pd.DataFrame:
    """Read probabilities ``image,<the profile's classes>`` (e.g. ``val_probs.csv``) as a float64
    frame indexed by image, columns in class order.

    Raises:
        CloudpipeError: missing file, wrong columns, no rows, an image name that is not a
            plain file name, a duplicate image, or a value that is not a number in [0, 1]
            (naming its line).
    """
    text = read_csv_text(path, ("image", *active().classes))
    require_plain_image_names(text["image"], path)
    values = text[list(active().classes)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~((values >= 0) & (values <= 1))  # also NaN: empty or not a number
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise CloudpipeError(f"{active().classes[k]} probability {text.iat[i, k + 1]!r} is not a number in [0, 1]",
                             path=path, line=int(i) + 2)
    _refuse_duplicates(text["image"], "image", path)
    return pd.DataFrame(values, index=pd.Index(text["image"], name="image"), columns=list(active().classes))
