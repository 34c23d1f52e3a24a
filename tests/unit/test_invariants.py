"""Invariants that a silently wrong core would break, each checked against numbers worked out by hand
(not against the code's own formulas): EMA steps, the learning-rate schedule, the losses, input/target
alignment of a patch through every augmentation, and a max-pool NMS that is symmetric in every axis."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CPU_TINY

from czii.config import LossConfig, load_config
from czii.postprocess.peaks import detect_peaks
from czii.training.data import PatchDataset
from czii.training.optim import ema_update, ema_warmup_decay, lr_factor, plan_epochs
from czii.training.losses import HeatmapLoss
from czii.training.patches import RunData


def _scalar_module(value: float) -> torch.nn.Module:
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_ema_moves_a_tenth_of_the_way_at_decay_0_9():
    ema, model = _scalar_module(0.0), _scalar_module(1.0)
    ema_update(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.1)  # 0.9 * 0 + 0.1 * 1
    ema_update(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.19)  # 0.9 * 0.1 + 0.1 * 1
    with torch.no_grad():
        model.weight.fill_(-1.0)
    ema_update(ema, model, 0.5)
    assert ema.weight.item() == pytest.approx(-0.405)  # 0.5 * 0.19 + 0.5 * -1
    assert model.weight.item() == -1.0, "the model itself is never changed"
    # early steps follow the model: 2/11 after the first step, the configured decay once (1+s)/(10+s) exceeds it
    assert ema_warmup_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_warmup_decay(0.9, 1000) == 0.9 and ema_warmup_decay(0.99, 80) == pytest.approx(81 / 90)


def test_lr_schedule_by_hand():
    # 10 warm-up steps of 100, cosine to 0.01
    assert lr_factor(0, 100, 10, "cosine", 0.01) == pytest.approx(0.1)
    assert lr_factor(4, 100, 10, "cosine", 0.01) == pytest.approx(0.5)
    assert lr_factor(9, 100, 10, "cosine", 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.01) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way: cos(pi/2) = 0
    assert lr_factor(100, 100, 10, "cosine", 0.01) == pytest.approx(0.01)
    assert lr_factor(1000, 100, 10, "cosine", 0.01) == pytest.approx(0.01)
    assert lr_factor(55, 100, 10, "constant", 0.01) == 1.0
    values = [lr_factor(s, 100, 10, "cosine", 0.01) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:])), "decays monotonically after the warm-up"


def test_a_budget_plans_the_epochs_that_fit():
    # 3 epochs done, 100 s left at 30 s an epoch: 3 more (6 in all), never past the configured 60
    assert plan_epochs(3, 60, 100.0, 30.0) == 6
    assert plan_epochs(3, 4, 100.0, 30.0) == 4
    assert plan_epochs(3, 60, 20.0, 30.0) == 3, "not even one more epoch fits: stop now"
    assert plan_epochs(3, 60, -5.0, 30.0) == 3, "over budget: stop now"
    assert plan_epochs(1, 60, 1e9, 0.0) == 60


def _loss(name: str, **kw) -> HeatmapLoss:
    cfg = dict(name=name, class_weights=None, pos_weight=1.0, background_weight=1.0, focal_gamma=2.0)
    cfg.update(kw)
    return HeatmapLoss(LossConfig(**cfg), 2)


def test_losses_by_hand():
    logits = torch.zeros(1, 2, 1, 1, 2)  # sigmoid 0.5 everywhere; 4 voxels
    target = torch.tensor([[[[[1.0, 0.0]]], [[[0.0, 0.0]]]]])
    ln2 = math.log(2.0)
    # bce: every voxel ln 2; weights class [1, 3] x (1 + 9 y): voxel weights 10, 1, 3, 3 -> mean 17/4
    assert _loss("bce", class_weights=[1.0, 3.0], pos_weight=10.0)(logits, target).item() == pytest.approx(
        ln2 * 17 / 4)
    # focal: p_t = 0.5 -> ln 2 * 0.25 per voxel (gamma 2), unit weights
    assert _loss("focal")(logits, target).item() == pytest.approx(ln2 * 0.25)
    # mse of sigmoid: (0.5 - 1)^2 = 0.25 and (0.5 - 0)^2 = 0.25 everywhere
    assert _loss("mse", pos_weight=3.0)(logits, target).item() == pytest.approx(0.25 * (3 + 1 + 1 + 1) / 4)
    # ce over background + 2 classes with equal logits: ln 3 per voxel, times the weight of the voxel's class
    # (probability targets: PyTorch averages over voxels, not over weights): (0.5 + 5) / 2 * ln 3
    ce_target = torch.zeros(1, 3, 1, 1, 2)
    ce_target[0, 0, 0, 0, 0] = 1.0
    ce_target[0, 2, 0, 0, 1] = 1.0
    ce = _loss("ce", class_weights=[2.0, 5.0], background_weight=0.5)
    assert ce(torch.zeros(1, 3, 1, 1, 2), ce_target).item() == pytest.approx((0.5 + 5.0) / 2 * math.log(3.0))
    # and a confident correct ce prediction costs nearly nothing, a confident wrong one a lot
    sure = torch.zeros(1, 3, 1, 1, 2)
    sure[0, 0, 0, 0, 0] = sure[0, 2, 0, 0, 1] = 20.0
    assert ce(sure, ce_target).item() < 1e-6 < 10 < ce(-sure, ce_target).item() + 10


@pytest.mark.parametrize("rotation", [0.0, 20.0])
def test_a_marked_voxel_and_its_target_stay_aligned_through_every_augmentation(rotation):
    config = load_config(CPU_TINY, [
        "patch.size_zyx=[16,32,32]", "patch.positive_fraction=1.0", "augment.intensity_scale=0",
        "augment.intensity_shift=0", "augment.noise_std=0", f"augment.small_rotation_deg={rotation}",
        "targets.sigma_factor=0.2", "train.steps_per_epoch=48", "train.batch_size=1",
    ])
    center = np.array([[20.0, 37.0, 45.0]])
    volume = np.zeros((1, 40, 80, 80), dtype=np.float32)
    volume[0, 20, 37, 45] = 1.0
    ribosome = config.data.classes.index("ribosome")
    run = RunData("sim", "TS_mark", volume, (20.0, 20.0, 20.0), center, np.array([ribosome]))
    dataset = PatchDataset(config, [run])
    seen = set()
    for index in range(len(dataset)):
        x, y = dataset[index]
        x_at = np.unravel_index(int(torch.argmax(x[0])), x.shape[1:])
        y_at = np.unravel_index(int(torch.argmax(y[ribosome])), y.shape[1:])
        assert np.abs(np.subtract(x_at, y_at)).max() <= (1 if rotation else 0), (index, x_at, y_at)
        seen.add((tuple(x_at), tuple(y_at)))
    assert len(seen) > 10, "patches differ: jitter, flips and turns were applied"


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("sign", [-1, 1])
def test_maxpool_nms_is_symmetric_in_every_axis(axis, sign):
    """apo-ferritin (60 Å) at 10 Å, nms factor 0.5: half-width 3 voxels, a 7-voxel box on both sides."""
    half = 3
    for offset, expected in ((half, 1), (half + 1, 2)):
        probs = np.zeros((1, 21, 21, 21), dtype=np.float32)
        strong = np.array([10, 10, 10])
        weak = strong.copy()
        weak[axis] += sign * offset
        probs[(0, *strong)] = 0.9
        probs[(0, *weak)] = 0.5
        picks = detect_peaks(probs, ["apo-ferritin"], 10.0, thresholds=0.1, run="r", nms_radius_factor=0.5)
        assert len(picks) == expected, (axis, sign, offset, picks)
        assert isinstance(picks, pd.DataFrame) and picks["score"].max() == pytest.approx(0.9)
