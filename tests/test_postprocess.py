"""Post-processing steps, their JSON form, and the tuning of any list of steps."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import pytest

from cloudpipe.algorithms import postprocess
from cloudpipe.algorithms.postprocess import (
    SHAPES,
    STEPS,
    MinSize,
    PostProcess,
    Shape,
    Step,
    Threshold,
    TopArea,
    binarize,
    choose,
    default_index,
    grid_stats,
    make_steps,
)
from cloudpipe.core.choices import DEFAULT_STEPS, STEP_NAMES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import remove_small_components
from cloudpipe.core.metric import dice_score
from tests.conftest import CLASSES


def test_postprocess_removes_small_components():
    probs = np.zeros((20, 30), np.uint8)
    probs[2:4, 2:4] = 200  # 4 pixels
    probs[10:18, 10:20] = 200  # 80 pixels
    probs[0, 29] = 100  # below threshold 0.5 (127.5)
    post = PostProcess((Threshold(), MinSize()), {c: (0.5, 5) for c in CLASSES})
    mask = post.apply(probs, 0)
    assert mask.sum() == 80 and mask[2:4, 2:4].sum() == 0
    assert PostProcess().apply(probs, 0).sum() == 84  # defaults: threshold 0.5, no minimum size


def test_grid_stats_match_brute_force():
    rng = np.random.default_rng(0)
    steps = (Threshold(), MinSize(grid=(0, 3, 20, 300)))
    for _ in range(10):
        probs = (rng.random((35, 52)) * 255).astype(np.uint8)
        probs[5:25, 10:40] = np.clip(probs[5:25, 10:40].astype(int) + 120, 0, 255).astype(np.uint8)
        truth = np.zeros((35, 52), np.uint8)
        truth[8:30, 12:45] = 1
        inter, area = grid_stats(steps, probs, truth)
        assert inter.shape == (5, 4)
        for (ti, t), (mi, m) in itertools.product(enumerate(steps[0].grid), enumerate(steps[1].grid)):
            mask = remove_small_components(binarize(probs, t), m).astype(bool)
            assert inter[ti, mi] == np.count_nonzero(mask & truth.astype(bool))
            assert area[ti, mi] == np.count_nonzero(mask)


@dataclass(frozen=True)
class Dilate(Step):
    """A test-only step: grow the mask by ``value`` pixels (shows any new step tunes)."""

    name: ClassVar[str] = "dilate"
    default: ClassVar[float] = 0
    grid: tuple = (0, 1, 3)

    def apply(self, mask, probs, value):
        import cv2

        return mask if value == 0 else cv2.dilate(mask, np.ones((2 * value + 1,) * 2, np.uint8))


def test_any_list_of_steps_tunes_to_the_best_combination():
    rng = np.random.default_rng(4)
    steps = (Threshold(grid=(0.4, 0.6)), Dilate(), MinSize(grid=(0, 30)))
    n = 6
    probs = (rng.random((n, 4, 24, 36)) * 255).astype(np.uint8)
    truth = np.zeros((n, 4, 24, 36), np.uint8)
    truth[:, :, 4:16, 6:20] = 1
    truth[::2, 2] = 0  # some absent classes
    assert check_tuning_beats_every_option(steps, probs, truth).shape == (4, 2, 3, 2)


def check_tuning_beats_every_option(steps: tuple[Step, ...], probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Tune ``steps`` on (n, 4, H, W) probabilities against truth; assert that every
    combination's Dice is what applying it gives and that the choice beats or equals each.
    Returns the Dice of every combination."""
    n = len(probs)
    stats = [[grid_stats(steps, probs[i, k], truth[i, k]) for k in range(4)] for i in range(n)]
    inter = np.array([[s[0] for s in row] for row in stats])
    area = np.array([[s[1] for s in row] for row in stats])
    post, dice = choose(steps, inter, area, truth.sum((2, 3)))
    for k, c in enumerate(CLASSES):
        scores = {}
        for combo in itertools.product(*(s.grid for s in steps)):
            masks = [PostProcess(steps, {cc: combo for cc in CLASSES}).apply(probs[i, k], k) for i in range(n)]
            scores[combo] = np.mean([dice_score(np.count_nonzero(m & truth[i, k]), m.sum(), truth[i, k].sum())
                                     for i, m in enumerate(masks)])
            assert dice[k][tuple(s.grid.index(v) for s, v in zip(steps, combo))] == pytest.approx(scores[combo])
        assert scores[post.values[c]] == pytest.approx(max(scores.values()))  # beats or equals every option
        assert dice[k].max() == pytest.approx(max(scores.values()))
    return dice


def test_ties_go_to_the_first_combination():
    steps = (Threshold(), MinSize())
    n, t, m = 3, len(steps[0].grid), len(steps[1].grid)
    inter = np.zeros((n, 4, t, m), np.int64)
    area = np.full((n, 4, t, m), 10, np.int64)
    inter[:, 1, 2, 3] = 10  # Flower perfect at threshold index 2, min size index 3
    post, dice = choose(steps, inter, area, np.full((n, 4), 10, np.int64))
    assert post.values["Flower"] == (steps[0].grid[2], steps[1].grid[3]) and dice[1, 2, 3] == 1.0
    assert post.values["Fish"] == (steps[0].grid[0], steps[1].grid[0])  # all tie


def test_choose_uses_the_grids_it_was_given():
    steps = (Threshold(grid=(0.1, 0.9)), MinSize(grid=(7, 70)))
    inter = np.zeros((1, 4, 2, 2), np.int64)
    inter[0, :, 1, 1] = 5
    post, _ = choose(steps, inter, np.full((1, 4, 2, 2), 5), np.full((1, 4), 5))
    assert post.values["Sugar"] == (0.9, 70)
    assert default_index(steps) is None  # 0.5 and 0 are not in these grids
    assert default_index((Threshold(), MinSize())) == (2, 0)


def test_json_round_trip_and_errors():
    post = PostProcess((Threshold(grid=(0.3, 0.5)), MinSize(grid=(0, 100))), {c: (0.3, 100) for c in CLASSES})
    data = json.loads(json.dumps(post.to_dict()))
    assert data["format"] == 2 and [s["step"] for s in data["steps"]] == ["threshold", "min_size"]
    again = PostProcess.from_dict(data)
    assert again == post and set(STEPS) >= {"threshold", "min_size"}
    with pytest.raises(CloudpipeError, match="^post-processing: format: missing \\(must be 2: run predict-seg --split val"):
        PostProcess.from_dict({"threshold": {c: 0.5 for c in CLASSES}, "min_size": {c: 0 for c in CLASSES}})
    with pytest.raises(CloudpipeError, match="steps.0.step: must be one of 'threshold', 'top_area', .*, got 'blur'$"):
        PostProcess.from_dict({"format": 2, "steps": [{"step": "blur", "grid": [1], "values": {}}]})
    with pytest.raises(CloudpipeError, match=r"steps.0.threshold.values.Sugar: missing \(must be a number in \[0, 1\]\)$"):
        PostProcess.from_dict({"format": 2, "steps": [{"step": "threshold", "grid": [0.5],
                                                        "values": {"Fish": 0.5, "Flower": 0.5, "Gravel": 0.5}}]})
    with pytest.raises(CloudpipeError, match="reads the probabilities"):
        PostProcess((MinSize(),))


def test_top_area_is_the_triplet_rule():
    probs = np.zeros((20, 30), np.uint8)
    probs[0:10, 0:10] = 140  # 100 pixels drawn at 0.5 but below the top threshold 0.7
    probs[0:3, 0:3] = 200  # 9 pixels above 0.7
    post = lambda area: PostProcess((Threshold(), TopArea()), {c: (0.5, (0.7, area)) for c in CLASSES})  # noqa: E731
    assert post(9).apply(probs, 0).sum() == 100  # enough pixels above the top: drawn at the low threshold
    assert post(10).apply(probs, 0).sum() == 0  # too few: blanked
    assert post(0).apply(probs, 0).sum() == 100  # area 0 keeps every mask
    alone = PostProcess((TopArea(),), {c: ((0.7, 9),) for c in CLASSES})
    assert alone.apply(probs, 0).sum() == 9  # as the first step it draws at the top threshold


def test_shapes_of_hand_made_components():
    mask = np.zeros((30, 40), np.uint8)
    mask[2:12, 2:12] = np.tri(10, dtype=np.uint8)  # a triangle: its hull is itself, its box the square
    mask[20:25, 20:35] = 1
    mask[22, 22:33] = 0  # a rectangle with a slit: hull and box fill it
    shape = Shape()
    assert np.array_equal(shape.apply(mask, None, "mask"), mask)
    hull, box = shape.apply(mask, None, "hull"), shape.apply(mask, None, "box")
    assert hull[2:12, 2:12].sum() == mask[2:12, 2:12].sum() and hull[20:25, 20:35].all()
    assert box[2:12, 2:12].all() and box[20:25, 20:35].all() and box.sum() == 100 + 75
    assert (hull >= mask).all() and (box >= hull).all()
    empty = np.zeros_like(mask)
    assert not shape.apply(empty, None, "box").any()


def test_every_step_tunes_to_at_least_each_option_it_searched():
    rng = np.random.default_rng(5)
    steps = (Threshold(grid=(0.4, 0.6)), TopArea(grid=((0.5, 0.0), (0.8, 20.0), (0.8, 200.0))),
             MinSize(grid=(0, 30, 150)), Shape())
    n = 6
    probs = (rng.random((n, 4, 24, 36)) * 200).astype(np.uint8)
    probs[:, :, 4:16, 6:20] += 55
    truth = np.zeros((n, 4, 24, 36), np.uint8)
    truth[:, :, 3:17, 5:21] = 1
    truth[::2, 1:3] = 0  # some absent classes
    check_tuning_beats_every_option(steps, probs, truth)


def test_new_steps_round_trip_and_build_by_name():
    steps = make_steps(STEP_NAMES)  # every name the commands offer builds, in the order listed
    assert [type(s) for s in steps] == [Threshold, TopArea, MinSize, Shape] and tuple(STEPS) == STEP_NAMES
    assert tuple(s.name for s in PostProcess().steps) == DEFAULT_STEPS
    assert max(steps[2].grid) >= 60000  # reaches what the real data wants (clouds350: Fish chose 60,000)
    post = PostProcess(steps, {c: (0.4, (0.7, 5000.0), 15000, "box") for c in CLASSES})
    again = PostProcess.from_dict(json.loads(json.dumps(post.to_dict())))
    assert again == post and "top_area 0.7 5000" in again.describe() and "shape box" in again.describe()
    assert default_index(steps) == (2, 0, 0, 0)
    with pytest.raises(CloudpipeError, match="unknown post-processing step"):
        make_steps(["threshold", "blur"])
    with pytest.raises(CloudpipeError, match="reads the probabilities"):
        make_steps(["shape", "threshold"])
    with pytest.raises(CloudpipeError, match="steps.0.shape.grid.0: must be a non-empty list, each one of mask, hull, box, got 'oval'"):
        PostProcess.from_dict({"format": 2, "steps": [{"step": "shape", "grid": ["oval"], "values": {}}]})


@pytest.mark.parametrize("step, value, message", [
    ("threshold", 2.0, r"steps.0.threshold.values.Gravel: must be a number in \[0, 1\], got 2.0"),
    ("threshold", "0.5", r"steps.0.threshold.values.Gravel: must be a number in \[0, 1\], got '0.5'"),
    ("min_size", -5, "steps.1.min_size.values.Gravel: must be a finite number >= 0, got -5"),
    ("min_size", float("nan"), "steps.1.min_size.values.Gravel: must be a finite number >= 0, got nan"),
    ("min_size", float("inf"), "steps.1.min_size.values.Gravel: must be a finite number >= 0, got inf"),
    ("top_area", [1.5, 100], r"values.Gravel.0: must be a pair \[top in \[0, 1\], finite area >= 0\], got 1.5"),
    ("top_area", [0.5, -1], r"values.Gravel.1: must be a pair .*, got -1"),
    ("top_area", 0.5, r"values.Gravel: must be a pair .*, got 0.5"),
    ("top_area", [0.5, 1, 2], r"values.Gravel: must be a pair .*, got \[0.5, 1, 2\]"),
    ("shape", "oval", "steps.1.shape.values.Gravel: must be one of mask, hull, box, got 'oval'"),
])
def test_a_post_processing_value_out_of_range_is_refused(step, value, message):
    steps = (Threshold(),) + ((STEPS[step](),) if step != "threshold" else ())
    post = PostProcess(steps, {c: tuple(s.default for s in steps) for c in CLASSES}).to_dict()
    post["steps"][-1]["values"]["Gravel"] = value
    with pytest.raises(CloudpipeError, match=message):
        PostProcess.from_dict(json.loads(json.dumps(post)))


@dataclass(frozen=True)
class WalkedMinSize(MinSize):
    """MinSize as the tree walk draws it, mask by mask (a subclass: no component shortcut)."""


@dataclass(frozen=True)
class WalkedShape(Shape):
    """Shape as the tree walk draws it, mask by mask."""


SMALL_GRIDS = {"threshold": Threshold(grid=(0.3, 0.5, 0.7)), "top_area": TopArea(grid=((0.5, 0.0), (0.6, 30.0), (0.8, 5.0))),
               "min_size": MinSize(grid=(0, 2, 5, 40, 100, 400)), "shape": Shape()}
COMBOS = [c for r in range(1, 5) for c in itertools.permutations(STEPS, r) if STEPS[c[0]].reads_probs]


@pytest.mark.parametrize("one_by_one", [48, 3])
@pytest.mark.parametrize("names", COMBOS, ids="-".join)
def test_grid_stats_of_every_step_combination_are_exact(names, one_by_one, monkeypatch):
    """Noise (many small and nested components) and blurred blobs: every combination's figures
    are those of applying it, and those of the walk drawing every mask (with hulls and boxes
    drawn one by one, and with kept sets of more than 3 drawn whole)."""
    monkeypatch.setattr(postprocess, "DRAWN_ONE_BY_ONE", one_by_one)
    rng = np.random.default_rng(len(names))
    steps = tuple(SMALL_GRIDS[n] for n in names)
    walked = tuple(WalkedMinSize(grid=s.grid) if type(s) is MinSize else WalkedShape(grid=s.grid) if type(s) is Shape
                   else s for s in steps)
    for trial in range(4):
        probs = (rng.random((30, 45)) * 255).astype(np.uint8)
        if trial % 2:
            probs = cv2.GaussianBlur(np.clip(probs + (rng.random((30, 45)) < 0.3) * 100, 0, 255).astype(np.uint8), (5, 5), 0)
        truth = (rng.random((30, 45)) < 0.4).astype(np.uint8)
        inter, area = grid_stats(steps, probs, truth)
        again = grid_stats(walked, probs, truth)
        assert np.array_equal(inter, again[0]) and np.array_equal(area, again[1])
        for index in itertools.product(*(range(len(s.grid)) for s in steps)):
            post = PostProcess(steps, {c: tuple(s.grid[j] for s, j in zip(steps, index)) for c in CLASSES})
            mask = post.apply(probs, 0).astype(bool)
            assert (inter[index], area[index]) == (np.count_nonzero(mask & truth.astype(bool)), np.count_nonzero(mask))


def test_grid_stats_shapes_overlap_and_nest():
    """Boxes and hulls that overlap each other, and a blob inside a thin ring that a minimum
    size drops: the union is counted once, and the blob is drawn once the ring is gone."""
    probs = np.zeros((40, 60), np.uint8)
    probs[2:30, 2:30] = 200
    probs[3:29, 3:29] = 0  # a ring of 108 pixels
    probs[6:26, 6:26] = 200  # a 400-pixel blob inside it
    probs[np.arange(30, 40), np.arange(32, 42)] = 200  # a diagonal of 10 pixels: its box overlaps the next one's
    probs[36:40, 30:34] = 200  # 16 pixels
    truth = np.zeros((40, 60), np.uint8)
    truth[0:30, 0:40] = 1
    steps = (Threshold(grid=(0.5,)), MinSize(grid=(0, 12, 200, 500)), Shape())
    inter, area = grid_stats(steps, probs, truth)
    for j, size in enumerate(steps[1].grid):
        for s, shape in enumerate(SHAPES):
            mask = Shape().apply(MinSize().apply(binarize(probs, 0.5), None, size), None, shape).astype(bool)
            assert (inter[0, j, s], area[0, j, s]) == (np.count_nonzero(mask & truth.astype(bool)), mask.sum())
    assert area[0, 0, 2] == 28 * 28 + 10 * 10 + 16 - 2 * 4  # the last two boxes overlap in 8 pixels: counted once
    assert area[0, 2, 0] == 400 and area[0, 2, 1] == 400 and area[0, 1, 0] == 108 + 400 + 16  # the ring dropped, the blob kept


def test_apply_says_it_wants_uint8_probabilities():
    """Float probabilities in [0, 1] used to give an empty mask (compared with thresholds x 255)."""
    from cloudpipe.algorithms.postprocess import PostProcess

    probs = np.full((8, 8), 0.9)
    with pytest.raises(TypeError, match=r"probs must be uint8 .*got float64; convert float probabilities with "
                                        r"\(p \* 255\)\.round\(\)\.astype\(np\.uint8\)"):
        PostProcess().apply(probs, 0)
    assert PostProcess().apply((probs * 255).round().astype(np.uint8), 0).all()
    with pytest.raises(ValueError, match=r"one class's \(H, W\) map, got shape \(4, 8, 8\)"):
        PostProcess().apply(np.zeros((4, 8, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="class index 0..3, got 4"):
        PostProcess().apply(np.zeros((8, 8), np.uint8), 4)


def test_values_outside_a_steps_bounds_are_refused_when_built():
    """PostProcess(values=...) took a threshold of 2.0 (which blanks every mask) without a word."""
    from cloudpipe.algorithms.postprocess import PostProcess, make_steps

    with pytest.raises(ValueError, match=r"^threshold value: must be a number in \[0, 1\], got 2.0$"):
        PostProcess(make_steps(["threshold"]), {"Fish": (2.0,), "Flower": (0.5,), "Gravel": (0.5,), "Sugar": (0.5,)})
    with pytest.raises(ValueError, match="^shape value: must be one of mask, hull, box, got 'circle'$"):
        PostProcess(make_steps(["threshold", "shape"]), {c: (0.5, "circle") for c in CLASSES})
