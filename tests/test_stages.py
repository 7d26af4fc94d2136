"""Stage objects: what differs between the classifier and the segmentation model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.config import load_config
from cloudpipe.engine.stages import STAGES, ClassifierStage, SegmentationStage, stage_for
from tests.conftest import CLASSES


def stages():
    return (stage_for(load_config("classifier", overrides={"arch": "tiny", "weights": "none"})),
            stage_for(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "head_weight": 0.0})))


def test_stage_for_picks_by_task():
    classifier, segmenter = stages()
    assert isinstance(classifier, ClassifierStage) and isinstance(segmenter, SegmentationStage)
    assert set(STAGES) == {"classifier", "segmentation"}
    assert (classifier.score_name, segmenter.score_name) == ("val_accuracy", "val_dice")
    assert classifier.keeps_val_probs and not segmenter.keeps_val_probs
    assert segmenter.needs_masks and not classifier.needs_masks


def test_models_give_one_output_per_class():
    classifier, segmenter = stages()
    images = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    assert classifier.build_model()(images).shape == (2, 4)
    assert segmenter.build_model()(images).shape == (2, 4, 32, 64)


def test_losses():
    classifier, segmenter = stages()
    assert classifier.loss(torch.zeros(2, 4), torch.ones(2, 4)).item() == pytest.approx(np.log(2))
    target = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    target[0, 1, :4] = 1
    seg = segmenter.loss(torch.zeros(2, 4, 8, 8), target)
    assert seg.item() > np.log(2)  # BCE + Dice
    perfect = segmenter.loss((target.float() * 2 - 1) * 50, target)
    assert perfect.item() < 1e-3


def test_validation_outputs_and_metrics():
    classifier, segmenter = stages()
    probs = classifier.outputs(torch.tensor([[10.0, -10, 10, -10], [-10, -10, 10, 10]]), torch.zeros(2, 4))
    labels = np.array([[1, 0, 1, 0], [1, 0, 0, 1]])
    metrics = classifier.metrics(probs, labels)
    assert metrics["val_accuracy"] == pytest.approx(np.mean([0.5, 1, 0.5, 1]))
    assert metrics["val_Fish"] == 0.5 and metrics["val_Flower"] == 1.0
    table = classifier.best_outputs(probs, ["a.jpg", "b.jpg"])
    assert list(table.columns) == ["image", *CLASSES] and isinstance(table, pd.DataFrame)

    target = torch.zeros(1, 4, 4, 4, dtype=torch.uint8)
    target[0, 0, :2] = 1  # Fish: 8 true pixels
    logits = torch.full((1, 4, 4, 4), -5.0)
    logits[0, 0, :1] = 5.0  # 4 predicted, all inside
    stats = segmenter.outputs(logits, target)
    assert stats.shape == (1, 4, 3) and stats[0, 0].tolist() == [4, 4, 8]
    dice = segmenter.metrics(stats, labels[:1])
    assert dice["val_Fish"] == pytest.approx(2 * 4 / 12) and dice["val_Sugar"] == 1.0  # empty vs empty
    assert segmenter.best_outputs(stats, ["a.jpg"]) is None


def test_unknown_task():
    config = load_config("classifier")
    config.task = "detector"
    with pytest.raises(CloudpipeError, match="detector"):
        stage_for(config)


def test_segmentation_head_adds_its_weighted_loss_and_accuracy():
    plain = stage_for(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "head_weight": 0.0}))
    headed = stage_for(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "head_weight": 0.5}))
    model = headed.build_model().eval()
    images = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    masks, labels = model(images)
    assert masks.shape == (2, 4, 32, 64) and labels.shape == (2, 4)
    assert not isinstance(plain.build_model()(images), tuple)  # head_weight 0: no head, masks alone
    target = torch.zeros(2, 4, 32, 64)
    target[0, 1, :8, :8] = 1
    present = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)  # from the masks: only image 0's Flower
    extra = headed.loss((masks, labels), target) - plain.loss(masks, target)
    heavier = stage_for(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "head_weight": 1.0}))
    assert extra > 0
    torch.testing.assert_close(heavier.loss((masks, labels), target) - plain.loss(masks, target), 2 * extra)  # weighted
    right = (present * 2 - 1) * 10  # confident logits that agree with the masks' presence, and their opposite
    assert headed.loss((masks, right), target) - plain.loss(masks, target) < 1e-3 < headed.loss((masks, -right), target) - plain.loss(masks, target)
    outputs = headed.outputs((masks, labels), target)
    assert outputs.shape == (2, 4, 4)
    np.testing.assert_allclose(outputs[..., :3], plain.outputs(masks, target))  # the masks' statistics unchanged
    np.testing.assert_allclose(outputs[..., 3], torch.sigmoid(labels).detach().numpy(), rtol=1e-6)
    metrics = headed.metrics(outputs, None)
    assert {"val_dice", "val_head_accuracy"} <= set(metrics)
    assert metrics["val_dice"] == plain.metrics(plain.outputs(masks, target), None)["val_dice"]
    with pytest.raises(CloudpipeError, match="head_weight"):
        load_config("classifier", overrides={"head_weight": 0.5})


def seg_stage(**overrides) -> SegmentationStage:
    return stage_for(load_config("segmentation", overrides={"arch": "tiny", "weights": "none", "head_weight": 0.0, **overrides}))


def test_loss_terms_are_smps_losses_with_their_weights():
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss

    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), (torch.rand(2, 4, 8, 8) > 0.6).to(torch.uint8)
    t = target.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
    dice = DiceLoss(mode="multilabel")(logits, t)
    assert seg_stage().loss(logits, target).item() == pytest.approx((bce + dice).item())  # today's BCE + Dice
    weighted = seg_stage(loss={"bce": 0.75, "dice": 0.25}).loss(logits, target)
    assert weighted.item() == pytest.approx((0.75 * bce + 0.25 * dice).item())
    lovasz = LovaszLoss(mode="binary", per_image=True)(logits.flatten(0, 1), t.flatten(0, 1))
    assert seg_stage(loss={"lovasz": 1.0}).loss(logits, target).item() == pytest.approx(lovasz.item())
    focal = FocalLoss(mode="multilabel")(logits, t)
    assert seg_stage(loss={"focal": 2.0}).loss(logits, target).item() == pytest.approx(2 * focal.item())
    classifier = stage_for(load_config("classifier", overrides={"arch": "tiny", "weights": "none", "loss": {"focal": 1.0}}))
    assert classifier.loss(logits[:, :, 0, 0], t[:, :, 0, 0]).item() == pytest.approx(
        FocalLoss(mode="multilabel")(logits[:, :, 0, 0], t[:, :, 0, 0]).item())


@pytest.mark.parametrize("term", ["dice", "lovasz"])
def test_present_only_region_losses_ignore_empty_masks(term):
    """``mask_loss_on: present``: the Dice / Lovasz term of the non-empty (image, class) masks,
    pair by pair; what the model draws on an empty mask does not change it (it does with ``all``)."""
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 8, 8), torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    target[0, 1, :4], target[1, 3, 2:] = 1, 1
    changed = logits.clone()
    changed[0, 3] += 5  # an empty pair (of a class present in the other image)
    present, every = seg_stage(loss={term: 1.0}, mask_loss_on="present"), seg_stage(loss={term: 1.0})
    assert present.loss(changed, target).item() == pytest.approx(present.loss(logits, target).item())
    assert every.loss(changed, target).item() != pytest.approx(every.loss(logits, target).item())
    pairs = [(0, 1), (1, 3)]
    if term == "dice":
        from segmentation_models_pytorch.losses import DiceLoss

        per_pair = [DiceLoss(mode="binary")(logits[i, c][None, None], target[i, c][None, None].float()) for i, c in pairs]
        assert present.loss(logits, target).item() == pytest.approx(torch.stack(per_pair).mean().item(), rel=1e-5)
    empty = torch.zeros_like(target)
    assert present.loss(logits, empty).item() == 0.0 and present.loss(logits.requires_grad_(), empty).requires_grad


def test_the_encoder_is_named_per_stage():
    classifier, segmenter = stages()
    assert classifier.in_encoder("body.layer1.0.weight") and not classifier.in_encoder("body.fc.weight")
    assert segmenter.in_encoder("body.encoder.0.0.weight") and not segmenter.in_encoder("body.decoder.1.0.weight")


@pytest.mark.parametrize("loss", [{"bce": 1.0}, {"bce": 0.75, "dice": 0.25}, {"focal": 1.0, "lovasz": 1.0}])
def test_positive_only_loss_ignores_empty_masks_in_every_term(loss):
    """``mask_loss_on: positive``: BCE (and focal) too see only the non-empty pairs; with
    ``present`` BCE still sees the empty ones."""
    from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss

    torch.manual_seed(2)
    logits, target = torch.randn(2, 4, 8, 8), torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    target[0, 1, :4], target[1, 3, 2:] = 1, 1
    changed = logits.clone()
    changed[0, 3] += 5  # an empty pair
    positive, present = seg_stage(loss=loss, mask_loss_on="positive"), seg_stage(loss=loss, mask_loss_on="present")
    assert positive.loss(changed, target).item() == pytest.approx(positive.loss(logits, target).item())
    if "bce" in loss:
        assert present.loss(changed, target).item() != pytest.approx(present.loss(logits, target).item())
    if loss == {"bce": 1.0}:
        pairs = torch.stack([logits[0, 1], logits[1, 3]]), torch.stack([target[0, 1], target[1, 3]]).float()
        assert positive.loss(logits, target).item() == pytest.approx(SoftBCEWithLogitsLoss()(*pairs).item(), rel=1e-6)
    empty = torch.zeros_like(target)
    nothing = positive.loss(logits.requires_grad_(), empty)
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_cutmix_pastes_one_box_of_a_partner_with_its_masks():
    stage = seg_stage(cutmix=1.0)
    g = torch.Generator().manual_seed(0)
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 32, 48, 3).clone()
    target = torch.zeros(4, 4, 32, 48, dtype=torch.uint8)
    for i in range(4):
        target[i, i] = 1  # image i: class i everywhere
    batch = {"image": images, "target": target, "index": torch.arange(4)}
    mixed = stage.mix(batch, g)
    assert torch.equal(batch["image"], images)  # the input batch is left alone
    for i in range(4):
        source = mixed["image"][i, ..., 0].long()  # which image each pixel came from
        assert set(source.unique().tolist()) <= {i, *range(4)}
        for k in range(4):
            assert torch.equal(mixed["target"][i, k].bool(), source == k)  # masks follow the pixels
    pasted = mixed["image"][..., 0] != images[..., 0]
    assert pasted.any() and not pasted.all()
    again = stage.mix(batch, torch.Generator().manual_seed(0))
    assert torch.equal(again["image"], mixed["image"])  # seeded: a resumed epoch replays it
    assert seg_stage(cutmix=0.0).mix(batch, g) is batch


def test_the_classifier_reports_auc_per_class_and_may_pick_best_by_it():
    classifier, _ = stages()
    labels = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.4, 0.6], [0.2, 0.2, 0.3, 0.7], [0.6, 0.3, 0.45, 0.8], [0.4, 0.1, 0.2, 0.1]])
    metrics = classifier.metrics(probs, labels)
    assert metrics["auc_Fish"] == 1.0 and np.isnan(metrics["auc_Flower"])  # Flower: no positive, no AUC
    assert metrics["auc_Gravel"] == 0.0 and metrics["auc_Sugar"] == 0.75  # Gravel: its negative ranks first
    assert metrics["val_auc"] == pytest.approx((1 + 0 + 0.75) / 3)
    assert metrics["val_accuracy"] == pytest.approx(np.mean([1, 1, 0.25, 0.75]))
    assert classifier.score_name == "val_accuracy"
    by_auc = stage_for(load_config("classifier", overrides={"arch": "tiny", "weights": "none", "best_by": "auc"}))
    assert by_auc.score_name == "val_auc" and by_auc.metrics(probs, labels) == pytest.approx(metrics, nan_ok=True)
    assert classifier.metrics(probs, np.ones_like(labels))["val_auc"] == 0.5  # no class has an AUC


def test_what_a_stage_writes_to_metrics_csv_and_picks_best_by_is_declared_once():
    """`cloudpipe runs` and TensorBoard read the stages' metric columns and score names (runs had
    its own copy of the score names): the declaration is what validation writes."""
    from cloudpipe.engine.stages import score_name

    classifier, segmenter = stages()
    probs, labels = np.array([[0.9, 0.1, 0.4, 0.6], [0.2, 0.7, 0.3, 0.7]]), np.array([[1, 0, 1, 1], [0, 1, 0, 0]])
    declared = [m.column for m in ClassifierStage.metric_columns] + [c for m in ClassifierStage.metric_columns
                                                                     for c in m.class_columns().values()]
    assert sorted(classifier.metrics(probs, labels)) == sorted(declared)
    dice, head = SegmentationStage.metric_columns
    stats = np.ones((1, 4, 3))
    assert sorted(segmenter.metrics(stats, None)) == sorted([dice.column, *dice.class_columns().values()])
    assert head.column in segmenter.metrics(np.ones((1, 4, 4)), None)
    assert (score_name("classifier"), score_name("classifier", "auc"), score_name("segmentation")) == (
        "val_accuracy", "val_auc", "val_dice")
    assert score_name("segmentation", "auc") is None and score_name("detector") is None and score_name(["x"]) is None


def test_a_stages_unused_settings_are_no_options_of_its_command_and_importing_stages_needs_no_torch():
    import re
    import subprocess
    import sys

    from tests.conftest import cli

    for task, command in (("classifier", "train-classifier"), ("segmentation", "train-seg")):
        text = cli(command, "--help").output
        other = "train-seg" if task == "classifier" else "train-classifier"
        for key in STAGES[task].unused_settings:
            option = "--" + key.replace("_", "-")
            assert not re.search(rf"{option}(?![\w-])", text), (command, option)  # --encoder-weights is --weights' alias
            assert key not in STAGES["segmentation" if task == "classifier" else "classifier"].unused_settings, other
    code = "import sys, cloudpipe.pipeline.runs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # cloudpipe runs starts fast
