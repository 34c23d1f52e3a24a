"""Augmentations: flips and quarter turns move targets exactly as they move the picks, and invert exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from czii.config import AugmentConfig, TargetsConfig
from czii.training.augment import (
    SpatialAug,
    augment_intensity,
    mixup,
    rotate_points_z,
    rotate_z,
    rotation_margin_zyx,
)
from czii.training.targets import TargetRenderer

SHAPE = (12, 20, 20)
CLASSES = ["apo-ferritin", "beta-amylase"]
RENDER = TargetRenderer.from_config(TargetsConfig("gaussian", 0.25, 0.5), CLASSES, (10.0, 10.0, 10.0))
PICKS = np.array([[2.0, 3.0, 15.0], [9.0, 14.0, 4.0], [5.0, 10.0, 11.0]])
LABELS = np.array([0, 1, 0])
ALL_SPATIAL = [SpatialAug(tuple(f), k) for f in itertools.product([False, True], repeat=3) for k in range(4)]


def _move_picks(picks_zyx: np.ndarray, aug: SpatialAug, shape_zyx) -> np.ndarray:
    """Where each voxel centre goes under ``aug``, written out independently of torch."""
    z, y, x = (picks_zyx[:, i].copy() for i in range(3))
    Z, Y, X = shape_zyx
    if aug.flip_zyx[0]:
        z = Z - 1 - z
    if aug.flip_zyx[1]:
        y = Y - 1 - y
    if aug.flip_zyx[2]:
        x = X - 1 - x
    for _ in range(aug.rot90_k):  # one quarter turn from y towards x: (y, x) -> (X - 1 - x, y)
        y, x = X - 1 - x, y.copy()
        Y, X = X, Y
    return np.stack([z, y, x], axis=1)


@pytest.mark.parametrize("aug", ALL_SPATIAL, ids=str)
def test_transformed_target_equals_target_of_transformed_picks(aug):
    target = torch.from_numpy(RENDER(PICKS, LABELS, SHAPE))
    moved = RENDER(_move_picks(PICKS, aug, SHAPE), LABELS, SHAPE)
    np.testing.assert_array_equal(aug.apply(target).numpy(), moved)


@pytest.mark.parametrize("aug", ALL_SPATIAL, ids=str)
def test_spatial_augmentations_invert_exactly(aug):
    t = torch.randn(2, *SHAPE)
    assert torch.equal(aug.invert(aug.apply(t)), t)


def test_sampling_respects_toggles():
    off = AugmentConfig(False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4)
    on = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4)
    rng = np.random.default_rng(0)
    assert {SpatialAug.sample(rng, off) for _ in range(20)} == {SpatialAug()}
    assert len({SpatialAug.sample(rng, on) for _ in range(400)}) == 32


@pytest.mark.parametrize("angle", [-15.0, 9.0, 20.0])
def test_small_rotation_moves_image_and_points_alike(angle):
    shape = (8, 33, 41)
    centre = np.array([[4.0, 9.0, 30.0]])
    image = torch.from_numpy(TargetRenderer.from_config(TargetsConfig("gaussian", 0.3, 0.5), ["ribosome"],
                                                        (10.0, 10.0, 10.0))(centre, np.array([0]), shape))
    rotated = rotate_z(image, angle)[0].numpy()
    peak = np.array(np.unravel_index(rotated.argmax(), rotated.shape), dtype=float)
    expected = rotate_points_z(centre, angle, shape)[0]
    assert np.abs(peak - expected).max() <= 0.6
    assert np.allclose(rotate_points_z(centre, 0.0, shape), centre)


@pytest.mark.parametrize("angle", [-15.0, 7.0, 30.0])
def test_rotation_margin_covers_the_patch(angle):
    size = np.array([4, 24, 32])
    margin = rotation_margin_zyx(angle, size)
    big = torch.ones(1, *(size + 2 * margin))
    inner = rotate_z(big, angle)[:, :, margin[1]:margin[1] + size[1], margin[2]:margin[2] + size[2]]
    assert inner.min() > 0.99


def test_intensity_augmentations_toggle_and_change_the_input():
    x = torch.randn(1, 4, 8, 8)
    rng = np.random.default_rng(1)
    off = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4)
    assert torch.equal(augment_intensity(x, rng, off), x)
    on = AugmentConfig(True, True, 0.0, 0.2, 0.2, 0.0, 0.1, 0.0, 0.4)
    out = augment_intensity(x, rng, on)
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_inversion_negates_the_patch_at_its_rate():
    x = torch.randn(1, 4, 8, 8)
    always = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, invert_prob=1.0)
    assert torch.equal(augment_intensity(x, np.random.default_rng(0), always), -x)
    half = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, invert_prob=0.5)
    rng = np.random.default_rng(1)
    negated = sum(torch.equal(augment_intensity(x, rng, half), -x) for _ in range(400))
    assert 160 <= negated <= 240  # binomial(400, 0.5): mean 200, sd 10


def test_blur_smooths_and_keeps_the_standard_deviation():
    x = torch.randn(1, 16, 32, 32)
    blur = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, blur_sigma=3.0)
    sigmas = []
    for seed in range(10):
        out = augment_intensity(x, np.random.default_rng(seed), blur)
        assert float(out.std()) == pytest.approx(float(x.std()), rel=1e-4)
        neighbour = float((out[..., 1:] * out[..., :-1]).mean() / out.var())  # lag-1 correlation along x
        sigma = float(np.random.default_rng(seed).uniform(0.0, 3.0))
        sigmas.append(sigma)
        # white noise blurred by σ: lag-1 correlation exp(−1 / (4σ²)); a small σ leaves it near 0
        expected = np.exp(-1.0 / (4.0 * sigma**2)) if sigma > 0.7 else None
        if expected is not None:
            assert neighbour == pytest.approx(expected, abs=0.08), sigma
    assert max(sigmas) > 2.0


def test_noise_lowers_the_snr_at_unit_variance():
    signal = torch.randn(1, 16, 32, 32)
    noisy = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.4)
    sigmas = []
    for seed in range(20):
        out = augment_intensity(signal, np.random.default_rng(seed), noisy)
        assert float(out.var()) == pytest.approx(1.0, abs=0.08)  # still z-scored
        kept = float((out * signal).mean() / signal.var())  # the share of the signal left: 1 / sqrt(1 + σ²)
        sigmas.append(np.sqrt(1 / kept**2 - 1))
    assert 0 <= min(sigmas) and max(sigmas) <= 2.0 + 0.1 and np.ptp(sigmas) > 0.5  # σ drawn from U(0, 2)


def test_intensity_ramp_is_linear_in_y_x_constant_in_z_and_bounded():
    x = torch.zeros(1, 4, 9, 11)
    ramp = AugmentConfig(True, True, 0.0, 0.0, 0.0, 0.8, 0.0, 0.0, 0.4)
    for seed in range(5):
        out = augment_intensity(x, np.random.default_rng(seed), ramp)
        assert torch.allclose(out, out[:, :1].expand_as(out))  # the same in every z slice
        plane = out[0, 0]
        assert 0 < plane.abs().max() <= 0.8 + 1e-6
        assert torch.allclose(plane + plane.flip(0, 1), torch.zeros_like(plane), atol=1e-5)  # odd about the centre
        second = plane[:, 2:] - 2 * plane[:, 1:-1] + plane[:, :-2]
        assert second.abs().max() < 1e-5  # linear along x (and, by symmetry of the check, y)


def test_mixup_blends_inputs_and_targets_with_the_same_weight():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 1, 2, 2, 2)
    y = 10 * x
    rng = np.random.default_rng(3)
    mx, my = mixup(x, y, rng, prob=1.0, alpha=0.4)
    assert not torch.equal(mx, x)
    torch.testing.assert_close(my, 10 * mx)
    same_x, same_y = mixup(x, y, rng, prob=0.0, alpha=0.4)
    assert same_x is x and same_y is y
