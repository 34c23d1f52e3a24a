"""Target rendering: peak 1 at the centre voxel in the right channel, measured sigma, spheres, points, labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from czii.config import TargetsConfig
from czii.particles import get_particle
from czii.training.targets import TargetRenderer, class_probabilities

CLASSES = ["apo-ferritin", "ribosome", "thyroglobulin"]


def _renderer(kind="gaussian", sigma_factor=0.3, sphere_factor=0.5, spacing=(10.0, 10.0, 10.0)):
    return TargetRenderer.from_config(TargetsConfig(kind, sigma_factor, sphere_factor), CLASSES, spacing)


def test_gaussian_peak_is_one_at_the_centre_voxel_of_the_right_channel():
    target = _renderer()(np.array([[10.3, 12.6, 14.4]]), np.array([1]), (24, 32, 32))
    assert target.shape == (3, 24, 32, 32) and target.dtype == np.float32
    assert target[0].max() == 0 and target[2].max() == 0
    assert np.unravel_index(target[1].argmax(), target[1].shape) == (10, 13, 14)
    assert target[1, 10, 13, 14] == 1.0


@pytest.mark.parametrize("spacing", [(10.0, 10.0, 10.0), (12.0, 10.0, 8.0)])
def test_gaussian_sigma_measured_from_the_profile_matches_the_config(spacing):
    sigma_factor = 0.3
    render = _renderer(sigma_factor=sigma_factor, spacing=spacing)
    target = render(np.array([[20, 20, 20]]), np.array([1]), (41, 41, 41))
    radius_A = get_particle("ribosome").radius_A
    profiles = (target[1, 20:, 20, 20], target[1, 20, 20:, 20], target[1, 20, 20, 20:])
    for axis, profile in enumerate(profiles):
        d = np.arange(1, 6)
        measured = d / np.sqrt(-2 * np.log(profile[1:6]))
        np.testing.assert_allclose(measured, sigma_factor * radius_A / spacing[axis], rtol=1e-4)


def test_overlapping_particles_combine_by_maximum():
    r = _renderer()
    a, b = np.array([[10, 10, 10]]), np.array([[10, 10, 14]])
    both = r(np.vstack([a, b]), np.array([0, 0]), (20, 24, 24))
    expected = np.maximum(r(a, np.array([0]), (20, 24, 24)), r(b, np.array([0]), (20, 24, 24)))
    np.testing.assert_array_equal(both, expected)
    assert both.max() == 1.0


def test_particle_outside_the_patch_contributes_only_its_tail():
    target = _renderer()(np.array([[10, 10, -3]]), np.array([1]), (20, 20, 20))
    assert 0 < target[1].max() < 1
    assert target[1, 10, 10, 0] == target[1].max()


def test_sphere_has_the_configured_radius():
    sphere_factor = 0.5
    target = _renderer("sphere", sphere_factor=sphere_factor)(np.array([[20, 20, 20]]), np.array([1]), (41, 41, 41))
    r_vox = sphere_factor * get_particle("ribosome").radius_A / 10.0  # 7.5 voxels
    assert set(np.unique(target)) == {0.0, 1.0}
    assert abs(target[1].sum() / (4 / 3 * math.pi * r_vox**3) - 1) < 0.1
    assert target[1, 20, 20, 20 + 7] == 1 and target[1, 20, 20, 20 + 8] == 0


def test_point_marks_exactly_the_centre_voxels():
    centres = np.array([[3.4, 5.6, 7.5], [10.0, 2.0, 1.0]])
    target = _renderer("point")(centres, np.array([0, 2]), (16, 16, 16))
    assert target.sum() == 2
    assert target[0, 3, 6, 8] == 1 and target[2, 10, 2, 1] == 1


def test_class_probabilities_are_one_hot_with_background_first():
    heat = _renderer("sphere")(np.array([[8, 8, 8], [8, 8, 20]]), np.array([0, 2]), (16, 16, 28))
    probs = class_probabilities(heat)
    assert probs.shape == (4, 16, 16, 28)
    np.testing.assert_array_equal(probs.sum(axis=0), 1.0)
    assert probs[1, 8, 8, 8] == 1 and probs[3, 8, 8, 20] == 1 and probs[0, 0, 0, 0] == 1
    np.testing.assert_array_equal(probs[1:], heat)
