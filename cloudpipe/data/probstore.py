"""Probability stores: a segmentation prediction's per-pixel probabilities, kept for ensembling
and re-tuning, owned here (names, format, checks).

A store beside ``val_seg.csv`` is two files:

```
val_seg_probs.npy   uint8 (n, classes, H, W) at the profile's submission size, NumPy .npy (C order): probability * 255, rounded
val_seg_probs.json  {"format": 1, "split": "val", "images": [n names, in row order],
                     "runs": [run folders], "fingerprints": [what each run is],
                     "weights": [one per run, summing to 1]}
```

``.npy`` is NumPy's own format: a short header then the raw bytes, so
``numpy.load(path, mmap_mode="r")`` maps it without reading it (no new dependency, no
decompression: reading a chunk costs what the disk gives), and a store of 1,000 images is
1000 * 4 * 350 * 525 bytes = 735 MB plus a 128-byte header for clouds. The JSON names the images and says
what was averaged, so a store is never applied to images or runs it was not made from.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import FileModel, read_model
from cloudpipe.core.profile import DEFAULT, active, packaged
from cloudpipe.data.beside import info_path
from cloudpipe.data.runfolder import read_json

FORMAT_VERSION = 1
CHUNK = 32  # images per write: ~23 MB at the clouds profile's size


def entry_shape() -> tuple[int, ...]:
    """One image's entry in a store: (classes, *submission size) of the active profile."""
    return (len(active().classes), *active().submission_size)


def _unique(images: list[str]) -> list[str]:
    repeated = [name for name, n in Counter(images).items() if n > 1]
    if repeated:
        raise ValueError(f"has duplicates ({', '.join(repeated[:3])})")
    return images


class StoreInfo(FileModel):
    """What a store holds, as its JSON says (:func:`info_writer` writes it, :func:`read_store`
    reads it): its images (row order), the split, and the runs averaged into it. Lists are JSON
    lists (``list("abc")`` would read a string as 3 names), one weight and one fingerprint per run."""

    format: Literal[1] = Field(description=f"must be {FORMAT_VERSION} (a probability store's JSON of this cloudpipe)")
    split: str = Field(description="must be a split name")
    images: Annotated[list[str], AfterValidator(_unique)] = Field(description="must be a JSON list of image names")
    runs: list[str] = Field(description="must be a JSON list of run folders")
    weights: list[float] = Field(description="must be a JSON list of numbers, one per run")
    fingerprints: list[str] = Field([], description="must be a JSON list of run fingerprints, one per run")
    """Each run's :func:`~cloudpipe.data.runfolder.run_fingerprint`."""
    classes: list[str] = Field(None, description="must be a JSON list of class names")
    """The profile's classes, in the order of the array's second axis; absent: the default profile's."""

    @classmethod
    def of(cls, split: str, images: Sequence[str], runs: Sequence[str], weights: Sequence[float],
           fingerprints: Sequence[str] = ()) -> StoreInfo:
        """A store's description as code makes it, checked as its reader will check it (a
        CloudpipeError for what the reader would refuse: duplicate images, a weight missing...)."""
        own = {} if active().is_default else {"classes": list(active().classes)}
        return read_model(cls, {"format": FORMAT_VERSION, "split": split, "images": list(images), "runs": list(runs),
                                "weights": list(weights), "fingerprints": list(fingerprints), **own}, "probability store")

    @model_validator(mode="after")
    def _one_per_run(self) -> StoreInfo:
        if not len(self.runs) == len(self.weights) == len(self.fingerprints):
            raise ValueError(f"needs one weight and one fingerprint per run: {len(self.runs)} run(s), "
                             f"{len(self.weights)} weight(s), {len(self.fingerprints)} fingerprint(s)")
        return self


def array_writer(store: np.ndarray) -> Callable[[Path], None]:
    """A writer for :func:`~cloudpipe.data.outputs.write_files`: the uint8 (n, classes, H, W)
    array as ``.npy``, written chunk by chunk (memory stays flat; a full disk is an OSError,
    never a SIGBUS)."""

    def write(path: Path) -> None:
        with open(path, "wb") as file:
            np.lib.format.write_array_header_1_0(file, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                        "fortran_order": False, "shape": tuple(store.shape)})
            for start in range(0, len(store), CHUNK):
                file.write(np.ascontiguousarray(store[start:start + CHUNK]).tobytes())

    return write


def info_writer(info: StoreInfo) -> Callable[[Path], None]:
    """A writer for :func:`~cloudpipe.data.outputs.write_files`: the store's JSON."""
    text = json.dumps(info.model_dump(exclude_unset=True), indent=1) + "\n"
    return lambda path: Path(path).write_text(text)


def read_store(path: Path) -> tuple[np.memmap, StoreInfo]:
    """Map a store read-only and read its JSON, checking both against each other.

    Raises:
        CloudpipeError: one line naming the file: missing, not ``.npy`` (wrong magic), another
            dtype, order or shape, no images, truncated, or a JSON that is unreadable, of another format,
            or whose image list does not match the array.
    """
    path, info_file = Path(path), info_path(path)
    info = read_model(StoreInfo, read_json(info_file, "probability store", missing="the store's image list is missing"),
                      "probability store", path=info_file)
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(file)
            offset = file.tell()
    except FileNotFoundError:
        raise CloudpipeError("probability store not found", path=path) from None
    except (OSError, ValueError) as err:
        raise CloudpipeError(f"not a probability store (.npy): {str(err).splitlines()[0]}", path=path) from None
    classes = tuple(info.classes) if info.classes is not None else packaged(DEFAULT).classes
    if classes != active().classes:
        raise CloudpipeError(f"holds classes {', '.join(classes)}, not the data's {', '.join(active().classes)}: a store "
                             "works only with data of its own profile", path=info_file)
    if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != entry_shape():
        raise CloudpipeError(f"holds {dtype} {'Fortran ' if fortran else ''}{tuple(shape)}, not uint8 (n, "
                             f"{', '.join(map(str, entry_shape()))}) in C order", path=path)
    if shape[0] == 0:
        raise CloudpipeError("holds no images: nothing to tune or apply", path=path)
    size, expected = path.stat().st_size, offset + math.prod(shape)
    if size != expected:
        raise CloudpipeError(f"is {'truncated' if size < expected else 'too long'}: {size} bytes, its header says "
                             f"{expected}", path=path)
    if len(info.images) != shape[0]:
        raise CloudpipeError(f"names {len(info.images)} images, the store holds {shape[0]}", path=info_file)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=tuple(shape)), info


def probability_store(folder: Path, shape: tuple[int, ...], dtype: type = np.uint8) -> np.memmap:
    """A memory map of ``shape`` in a file of ``folder`` that has no name: the file is
    unlinked as soon as it is made (or never named, with ``O_TMPFILE``), so its space returns
    when the map is dropped or the process ends, even by ``kill -9``. Its space is allocated
    up front, so a full disk fails here (a CloudpipeError) rather than as a SIGBUS mid-run."""
    try:
        with tempfile.TemporaryFile(dir=folder) as file:  # the map keeps its own handle
            os.posix_fallocate(file.fileno(), 0, math.prod(shape) * np.dtype(dtype).itemsize)
            return np.memmap(file, dtype=dtype, mode="w+", shape=shape)
    except OSError as err:
        raise CloudpipeError(f"cannot make the temporary probability store ({err.strerror or err})", path=folder) from None
