"""Patch sampler: particles inside their patches, positive fraction, class balance, source weights, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from czii.config import PatchConfig
from czii.training.patches import PatchSampler, RunData, crop

SIZE = [16, 32, 32]


def _run(source: str, name: str, n_per_class: tuple[int, ...], seed: int, shape=(40, 90, 100)) -> RunData:
    rng = np.random.default_rng(seed)
    classes = np.repeat(np.arange(len(n_per_class)), n_per_class)
    centres = rng.uniform([0, 0, 0], np.array(shape) - 1, size=(len(classes), 3))
    return RunData(source, name, np.zeros((1, *shape), np.float32), (10.0, 10.0, 10.0), centres, classes)


def _cfg(positive_fraction=0.7, class_balanced=True, jitter_fraction=1.0) -> PatchConfig:
    return PatchConfig(SIZE, positive_fraction, class_balanced, jitter_fraction)


def _draws(sampler, n, seed=0):
    return [sampler.draw(np.random.default_rng([seed, i])) for i in range(n)]


def test_positive_patches_contain_their_particle_and_stay_in_the_volume():
    runs = [_run("a", "r0", (5, 30, 2), 0), _run("a", "r1", (4, 1, 9), 1)]
    draws = _draws(PatchSampler(runs, {"a": 1.0}, _cfg()), 1500)
    positives = [d for d in draws if d.particle >= 0]
    assert positives
    for d in draws:
        shape = np.array(runs[d.run_index].volume.shape[1:])
        start = np.array(d.start_zyx)
        assert np.all(start >= 0) and np.all(start + SIZE <= shape)
        if d.particle >= 0:
            centre = np.rint(runs[d.run_index].centers_zyx_vox[d.particle])
            assert np.all(centre >= start) and np.all(centre < start + SIZE)
    # jitter moves the particle off the patch centre
    offsets = {tuple(np.rint(runs[d.run_index].centers_zyx_vox[d.particle]) - d.start_zyx) for d in positives}
    assert len(offsets) > 50


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_positive_fraction_is_respected(fraction):
    runs = [_run("a", "r0", (5, 5), 0)]
    draws = _draws(PatchSampler(runs, {"a": 1.0}, _cfg(positive_fraction=fraction)), 2000)
    share = np.mean([d.particle >= 0 for d in draws])
    assert abs(share - fraction) < 0.04


def test_class_balanced_draws_even_out_rare_classes():
    runs = [_run("a", "r0", (100, 5), 0)]
    balanced = _draws(PatchSampler(runs, {"a": 1.0}, _cfg(positive_fraction=1.0)), 2000)
    per_class = np.bincount([runs[0].class_index[d.particle] for d in balanced], minlength=2) / len(balanced)
    assert abs(per_class[1] - 0.5) < 0.05
    plain = _draws(PatchSampler(runs, {"a": 1.0}, _cfg(positive_fraction=1.0, class_balanced=False)), 2000)
    share_rare = np.mean([runs[0].class_index[d.particle] == 1 for d in plain])
    assert share_rare < 0.1


def test_sources_are_drawn_by_weight_and_draws_are_deterministic():
    runs = [_run("real", "r0", (3,), 0), _run("sim", "s0", (3,), 1), _run("sim", "s1", (3,), 2)]
    sampler = PatchSampler(runs, {"real": 3.0, "sim": 1.0}, _cfg())
    draws = _draws(sampler, 2000)
    share_real = np.mean([runs[d.run_index].source == "real" for d in draws])
    assert abs(share_real - 0.75) < 0.04
    assert draws[:50] == _draws(sampler, 50)
    assert draws[:50] != _draws(sampler, 50, seed=1)


def test_volume_smaller_than_the_patch_starts_at_zero_and_crop_pads():
    runs = [_run("a", "r0", (2,), 0, shape=(10, 20, 40))]
    for d in _draws(PatchSampler(runs, {"a": 1.0}, _cfg()), 50):
        assert d.start_zyx[0] == 0 and d.start_zyx[1] == 0
    volume = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    patch = crop(volume, (-1, 2, 3), (3, 4, 4))
    assert patch.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(patch[:, 1:, :3, :3], volume[:, :2, 2:5, 3:6])
    assert patch[:, 0].max() == 0 and patch[:, :, 3].max() == 0 and patch[:, :, :, 3].max() == 0
