"""The one voxel ↔ Ångström conversion, both directions, and the particle constants."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from czii.simulate import DEFAULT_REAL_PICKS_CSV
from czii.geometry import extent_xyz_A, xyz_A_to_zyx_vox, zyx_vox_to_xyz_A
from czii.particles import BY_LABEL, PARTICLE_NAMES, PARTICLES, TOTAL_WEIGHT, get_particle

REAL_SPACING_ZYX = (10.012444196428572, 10.012444196428572, 10.012444537618887)
TRAIN_PICKS_CSV = Path(DEFAULT_REAL_PICKS_CSV)  # 1,269 real picks (package data)


def test_xyz_to_zyx_swaps_axes_and_divides_by_spacing():
    xyz = np.array([[100.0, 200.0, 300.0]])
    zyx = xyz_A_to_zyx_vox(xyz, (2.0, 4.0, 5.0))  # z, y, x spacings
    np.testing.assert_allclose(zyx, [[300.0 / 2.0, 200.0 / 4.0, 100.0 / 5.0]])


def test_zyx_to_xyz_multiplies_and_swaps_back():
    zyx = np.array([[1.0, 2.0, 3.0]])
    xyz = zyx_vox_to_xyz_A(zyx, (2.0, 4.0, 5.0))
    np.testing.assert_allclose(xyz, [[3.0 * 5.0, 2.0 * 4.0, 1.0 * 2.0]])


def test_round_trip_on_real_picks_at_real_spacing():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 6300, size=(500, 3))
    back = zyx_vox_to_xyz_A(xyz_A_to_zyx_vox(xyz, REAL_SPACING_ZYX), REAL_SPACING_ZYX)
    np.testing.assert_allclose(back, xyz, rtol=0, atol=1e-9)


def test_voxel_centre_convention_integer_voxel_maps_to_multiple_of_spacing():
    xyz = zyx_vox_to_xyz_A([[0, 0, 0], [5, 6, 7]], 10.0)
    np.testing.assert_allclose(xyz, [[0, 0, 0], [70, 60, 50]])
    assert tuple(np.rint(xyz_A_to_zyx_vox([[74.9, 64.9, 54.9]], 10.0)[0]).astype(int)) == (5, 6, 7)


def test_single_point_and_bad_shapes():
    assert xyz_A_to_zyx_vox([10.0, 20.0, 30.0], 10.0).shape == (1, 3)
    with pytest.raises(ValueError, match="shape"):
        xyz_A_to_zyx_vox(np.zeros((4, 2)), 10.0)
    with pytest.raises(ValueError, match="spacing"):
        zyx_vox_to_xyz_A(np.zeros((1, 3)), 0.0)
    with pytest.raises(ValueError, match="spacing"):
        zyx_vox_to_xyz_A(np.zeros((1, 3)), (1.0, 2.0))


def test_extent_of_real_tomogram():
    ext = extent_xyz_A((184, 630, 630), REAL_SPACING_ZYX)
    sz, sy, sx = REAL_SPACING_ZYX
    np.testing.assert_allclose(ext, [629.5 * sx, 629.5 * sy, 183.5 * sz])


def test_real_picks_fall_inside_a_real_tomogram():
    picks = pd.read_csv(TRAIN_PICKS_CSV)
    ext = extent_xyz_A((184, 630, 630), REAL_SPACING_ZYX)
    xyz = picks[["x", "y", "z"]].to_numpy()
    assert (xyz >= 0).all() and (xyz <= ext).all()


def test_particle_constants():
    assert PARTICLE_NAMES == (
        "apo-ferritin", "beta-amylase", "beta-galactosidase", "ribosome", "thyroglobulin", "virus-like-particle",
    )
    assert TOTAL_WEIGHT == 7
    assert [p.label for p in PARTICLES] == [1, 2, 3, 4, 5, 6]
    assert BY_LABEL[4].name == "ribosome"
    assert get_particle("beta-amylase").weight == 0
    assert get_particle("ribosome").match_radius_A == 75.0
    with pytest.raises(KeyError, match="known types"):
        get_particle("ferritin")
