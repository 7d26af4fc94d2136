"""``cloudpipe pseudo-label``: a new data folder whose training set also holds the test images a
tuned ensemble labelled confidently (:mod:`cloudpipe.algorithms.pseudo`).

The new folder is a complete Kaggle-layout folder linking the original images and the chosen
test images; ``train.csv`` adds their pseudo-labels (at the training images' size, in the
profile's layout), ``pseudo_labels.csv`` names them (with their probabilities), ``pseudo.yaml``
records the rule and the sources (and ``profile.yaml`` the profile, unless clouds). Training on it keeps them out of every validation split and fold
(:func:`cloudpipe.engine.train.make_splits`), so validation scores stay on real labels.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cloudpipe.algorithms.pseudo import PseudoRule, confident
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active, join_label
from cloudpipe.core.rle import mask2rle, parse_rle, rle2mask
from cloudpipe.data.images import check_images
from cloudpipe.data.kaggle import (
    PSEUDO_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    list_test_images,
    read_mask_csv,
    read_probs_csv,
    read_train,
    require_same_images,
    to_layout,
    to_wide,
    train_image_shape,
)
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.profiles import write_folder_profile
from cloudpipe.engine.runner import Runner
from cloudpipe.pipeline.subset import build_data_folder

PSEUDO_YAML = "pseudo.yaml"
DEFAULT_RULE = PseudoRule()


@dataclass
class PseudoSummary:
    """What :func:`pseudo_label` wrote."""

    out_dir: Path
    train_images: int
    pseudo: list[str]
    test_images: int

    def line(self) -> str:
        return (f"{len(self.pseudo)} of {self.test_images} test images pseudo-labelled; {self.out_dir} trains on "
                f"{self.train_images} + {len(self.pseudo)} images (the pseudo-labelled ones never validate)")


def pseudo_label(data_dir: Path, seg: Path, probs: Path, out_dir: Path, rule: PseudoRule = DEFAULT_RULE, *,
                 mask_shape: tuple[int, int] | None = None, overwrite: bool = False) -> PseudoSummary:
    """Write a data folder training on ``data_dir``'s images and the confident test images.

    Args:
        seg: the test submission whose masks (at ``mask_shape``) become labels.
        probs: the presence probabilities the submission was gated on (``<stem>_probs.csv``).
        rule: which images are confident (:func:`cloudpipe.algorithms.pseudo.confident`).

    Raises:
        CloudpipeError: bad inputs (naming file and line), image sets that differ, test images
            of another size than the training images, no confident image, an ``out_dir`` that
            may not be replaced, a failed write; nothing is written then.
    """
    mask_shape = mask_shape or active().submission_size
    return build_data_folder(data_dir, out_dir, "pseudo-label", f"already pseudo-labelled ({PSEUDO_CSV}); pseudo-label "
                             "its source folder", Inputs.of(seg, probs), overwrite,
                             lambda source, run: _pseudo_label(source, seg, probs, Path(out_dir), rule, mask_shape, run))


def _pseudo_label(data_dir: Path, seg: Path, probs: Path, out_dir: Path, rule: PseudoRule, mask_shape: tuple[int, int],
                  run: Runner) -> PseudoSummary:
    """The work of :func:`pseudo_label` once ``out_dir`` is claimed."""
    train = read_train(data_dir)
    shape = train_image_shape(data_dir)
    masks = to_wide(read_mask_csv(seg, shape=mask_shape))
    scores = read_probs_csv(probs)
    test = list_test_images(data_dir)
    require_same_images(test, list(masks.index), f"{seg}:", "; --seg wants the test submission predict wrote with this --data")
    require_same_images(test, list(scores.index), f"{probs}:")
    clash = sorted(set(test) & set(train["image"]))
    if clash:
        raise CloudpipeError(f"test image {clash[0]} is also a training image", path=data_dir)
    areas = np.array([[int(parse_rle(masks.at[i, c], mask_shape)[1].sum()) for c in active().classes] for i in test])
    chosen = [image for image, keep in zip(test, confident(scores.loc[test].to_numpy(), areas, rule)) if keep]
    if not chosen:
        raise CloudpipeError(f"no test image of {len(test)} meets the rule (min_confidence {rule.min_confidence}, "
                             f"min_area {rule.min_area}); nothing written", path=seg)
    paths = {image: data_dir / TEST_IMAGES / image for image in chosen}
    check_images(paths.values(), shape)  # the same size as the training images (train.csv's masks)
    rows = [(join_label(image, c), _at(masks.at[image, c], mask_shape, shape), image, c)
            for image in chosen for c in active().classes]
    labels = to_layout(pd.concat([train, pd.DataFrame(rows, columns=train.columns)], ignore_index=True), active().train_csv)
    record = {"rule": rule.to_dict(), "source": str(data_dir), "seg": str(Path(seg).resolve()),
              "probs": str(Path(probs).resolve()), "pseudo_images": len(chosen), "test_images": len(test)}
    images = [*pd.unique(train["image"]), *chosen]
    run.write_folder(out_dir, lambda folder: _fill_folder(data_dir, folder, labels, images, paths, scores.loc[chosen], record))
    return PseudoSummary(out_dir, train["image"].nunique(), chosen, len(test))


def _at(rle: str, source: tuple[int, int], shape: tuple[int, int]) -> str:
    """An RLE mask of size ``source`` at size ``shape`` (nearest neighbour)."""
    return rle if source == tuple(shape) or not rle else mask2rle(resize_nearest(rle2mask(rle, source), shape))


def _fill_folder(data_dir: Path, folder: Path, labels: pd.DataFrame, images: list[str], pseudo: dict[str, Path],
                 probs: pd.DataFrame, record: dict) -> None:
    """Write the new data folder's files into the empty ``folder``."""
    (folder / TRAIN_IMAGES).mkdir()
    for image in images:
        source = pseudo.get(image, data_dir / TRAIN_IMAGES / image)
        (folder / TRAIN_IMAGES / image).symlink_to(source.resolve())
    (folder / TEST_IMAGES).symlink_to((data_dir / TEST_IMAGES).resolve(), target_is_directory=True)
    if (data_dir / SAMPLE_SUBMISSION_CSV).exists():
        shutil.copyfile(data_dir / SAMPLE_SUBMISSION_CSV, folder / SAMPLE_SUBMISSION_CSV)
    labels.to_csv(folder / TRAIN_CSV, index=False)
    write_folder_profile(folder, active())
    probs.reset_index().to_csv(folder / PSEUDO_CSV, index=False, float_format="%.6f")
    (folder / PSEUDO_YAML).write_text(yaml.safe_dump(record, sort_keys=False))
