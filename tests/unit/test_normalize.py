"""Per-tomogram normalisation: independent of raw scale and offset, robust to outliers, zero mean and unit spread."""

from __future__ import annotations

import numpy as np

from czii.data.normalize import normalize_volume


def _volume(seed=0):
    return np.random.default_rng(seed).normal(size=(16, 24, 24)).astype(np.float32)


def test_output_is_independent_of_raw_scale_and_offset():
    v = _volume()
    reference = normalize_volume(v)
    for scale, offset in ((1e-5, 0.0), (1e-5, 3e-5), (250.0, -40.0)):
        np.testing.assert_allclose(normalize_volume(v * scale + offset), reference, atol=1e-4)


def test_clipped_z_score_statistics():
    v = _volume(1)
    v[0, 0, 0] = 1e6  # one wild voxel must not set the scale
    out = normalize_volume(v, (1.0, 99.0))
    assert out.dtype == np.float32 and out.shape == v.shape
    assert abs(float(out.mean())) < 0.05 and abs(float(out.std()) - 1) < 0.05
    assert out.max() < 4 and out[0, 0, 0] == out.max()
    assert v[0, 0, 0] == 1e6  # the input is left alone


def test_constant_volume_becomes_zeros():
    np.testing.assert_array_equal(normalize_volume(np.full((4, 4, 4), 7.0, np.float32)), 0.0)
