"""The training recipe by name: optimizers, parameter groups, schedules, weight averages, frozen BatchNorm."""

from __future__ import annotations

import pytest
import torch

from cloudpipe.engine.config import load_config
from cloudpipe.engine.recipe import (
    WARMUP_START,
    keep_frozen_in_eval,
    make_average,
    make_optimizer,
    make_scheduler,
    param_groups,
    swa_epoch,
)
from cloudpipe.engine.stages import stage_for

TINY = {"arch": "tiny", "weights": "none"}


def built(task: str, **overrides):
    config = load_config(task, overrides={**TINY, **overrides})
    stage = stage_for(config)
    return config, stage, stage.build_model()


@pytest.mark.parametrize("task, encoder, rest", [("classifier", "body.layer1.0.weight", "body.fc.weight"),
                                                 ("segmentation", "body.encoder.0.0.weight", "body.decoder.1.0.weight")])
def test_the_encoder_trains_at_its_share_of_the_lr(task, encoder, rest):
    config, stage, model = built(task, lr=0.01, encoder_lr_ratio=0.1, freeze=[])
    params = dict(model.named_parameters())
    groups = param_groups(model, stage, config)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert any(p is params[rest] for p in groups[0]["params"]) and any(p is params[encoder] for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(params)
    config, stage, model = built(task, lr=0.01)
    assert len(param_groups(model, stage, config)) == 1  # ratio 1: today's single group


def test_frozen_parameters_are_left_out_of_every_group():
    config, stage, model = built("classifier", encoder_lr_ratio=0.5, freeze=["layer1"])
    kept = {id(p) for g in param_groups(model, stage, config) for p in g["params"]}
    assert not any(id(p) in kept for p in model.body.layer1.parameters()) and id(model.body.layer2[0].weight) in kept


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_by_name(name, kind):
    config, stage, model = built("segmentation", optimizer=name, weight_decay=0.01)
    optimizer = make_optimizer(model, stage, config)
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 0.01


def lrs(config, steps_per_epoch: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    seen = []
    for _ in range(config.epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_warms_up_linearly_then_decays_to_zero():
    config = load_config("classifier", overrides={"lr": 0.1, "epochs": 4, "schedule": "cosine", "warmup_epochs": 1})
    seen = lrs(config, steps_per_epoch=5)
    assert seen[0] == pytest.approx(0.1 * WARMUP_START)
    assert all(a < b for a, b in zip(seen[:5], seen[1:6])) and seen[5] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(seen[5:], seen[6:])) and seen[-1] < 0.002


def test_onecycle_peaks_after_its_warmup():
    config = load_config("classifier", overrides={"lr": 0.1, "epochs": 4, "schedule": "onecycle", "warmup_epochs": 1})
    seen = lrs(config, steps_per_epoch=5)
    assert max(seen) == pytest.approx(0.1, rel=0.05) and seen.index(max(seen)) in (4, 5)
    assert seen[0] < 0.01 and seen[-1] < 1e-4


def test_plateau_is_todays_schedule():
    config = load_config("classifier", overrides={"patience": 2})
    scheduler = make_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), config, 5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.patience == 2


def test_ema_is_the_exponential_mean_of_the_weights_and_buffers():
    config, _, model = built("classifier", ema=0.9)
    average = make_average(model, config)
    average.update_parameters(model)  # the first update copies (torch's AveragedModel)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))  # moves the BatchNorm statistics
    average.update_parameters(model)
    second = model.state_dict()
    got = average.module.state_dict()
    for key in ("body.fc.weight", "body.layer1.1.running_mean"):
        torch.testing.assert_close(got[key], 0.9 * first[key] + 0.1 * second[key])


def test_swa_is_the_plain_mean_over_its_window():
    config, _, model = built("classifier", epochs=5, swa_epochs=2)
    assert [swa_epoch(config, e) for e in range(5)] == [False, False, False, True, True]
    average, weights = make_average(model, config), []
    for step in range(2):
        with torch.no_grad():
            model.body.fc.weight.add_(step + 1.0)
        weights.append(model.body.fc.weight.detach().clone())
        average.update_parameters(model)
    torch.testing.assert_close(average.module.body.fc.weight, (weights[0] + weights[1]) / 2)
    assert make_average(model, built("classifier")[0]) is None


def test_frozen_batchnorm_stays_in_eval_mode():
    _, _, model = built("classifier", freeze=["layer1"])
    model.train()
    keep_frozen_in_eval(model)
    frozen, trained = model.body.layer1[1], model.body.layer2[1]
    assert not frozen.training and trained.training
    before = frozen.running_mean.clone()
    model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert torch.equal(frozen.running_mean, before) and frozen.num_batches_tracked == 0
