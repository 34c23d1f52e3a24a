"""Sliding window: tile plans cover the volume, blending leaves no seams, tiling matches one big tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from czii.errors import ConfigError, DataError
from czii.inference import EnsembleMember, blend_window, plan_tiles, predict_volume
from czii.registry import BLEND_MODES


def _member(model: torch.nn.Module, n_classes: int, stride: int = 8) -> EnsembleMember:
    classes = tuple(f"c{i}" for i in range(n_classes))
    return EnsembleMember(model, classes, ("denoised",), "sigmoid", stride=stride, name="tiny")


def _random_volume(shape_zyx, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape_zyx)).astype(np.float32)


@pytest.mark.parametrize(
    "shape, tile, overlap, stride",
    [
        ((184, 630, 630), (64, 128, 128), 0.25, 32),
        ((37, 70, 45), (32, 32, 32), 0.5, 16),
        ((5, 9, 100), (16, 32, 32), 0.0, 16),
    ],
)
def test_plan_covers_volume_with_requested_overlap(shape, tile, overlap, stride):
    plan = plan_tiles(shape, tile, overlap, stride)
    for size, side, starts, requested in zip(shape, plan.tile_zyx, plan.starts_zyx, tile):
        assert side % stride == 0 and side <= requested
        assert side >= size or side == requested  # shrunk only where the volume is smaller
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + side] = True
        assert covered.all()
        assert starts[0] == 0
        assert starts[-1] == max(0, size - side)  # last tile aligned to the end, no extra padding
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= side * (1 - overlap)).all()
    assert plan.n_tiles == len(plan.origins_zyx())


def test_full_tomogram_plan_is_small():
    plan = plan_tiles((184, 630, 630), (64, 128, 128), 0.25, 32)
    assert plan.tile_zyx == (64, 128, 128)
    assert plan.n_tiles == 4 * 7 * 7


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blend_windows_are_positive_and_symmetric(mode):
    for side in (16, 32, 128):
        w = blend_window(side, mode)
        assert w.shape == (side,) and (w > 0).all() and w.max() <= 1.0
        np.testing.assert_allclose(w, w[::-1])
    if mode != "constant":
        assert blend_window(64, mode)[0] < 0.1 * blend_window(64, mode)[32]


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_constant_input_gives_constant_output_without_seams(mode):
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, kernel_size=1)
    volume = np.full((1, 37, 70, 45), 0.7, np.float32)  # no side a multiple of the tile
    out = predict_volume([_member(model, 2)], volume, tile_zyx=(16, 32, 24), overlap=0.3, blend=mode)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.full((1, 1, 1, 1, 1), 0.7)))[0, :, 0, 0, 0].numpy()
    assert out.shape == (2, 37, 70, 45) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None, None], out.shape), atol=1e-5)


def _two_layer_conv(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1)
    )  # receptive radius 2; zero padding makes tile borders differ from the volume interior


def _contaminated(plan, radius: int) -> np.ndarray:
    """Voxels within ``radius`` of a tile face that lies inside the volume, for any tile."""
    mask = np.zeros(plan.shape_zyx, bool)
    for origin in plan.origins_zyx():
        for axis, (o, t, s) in enumerate(zip(origin, plan.tile_zyx, plan.shape_zyx)):
            for face in (o, o + t):
                if 0 < face < s:
                    idx = [slice(a, min(a + b, c)) for a, b, c in zip(origin, plan.tile_zyx, plan.shape_zyx)]
                    idx[axis] = slice(max(face - radius, o), min(face + radius, o + t, s))
                    mask[tuple(idx)] = True
    return mask


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_small_tiles_match_one_whole_volume_tile_away_from_borders(mode):
    model = _two_layer_conv(1)
    shape = (40, 72, 56)
    volume = _random_volume(shape, seed=5)
    whole = predict_volume([_member(model, 2)], volume, tile_zyx=shape, blend=mode)
    tiled = predict_volume([_member(model, 2)], volume, tile_zyx=(16, 32, 24), overlap=0.5, blend=mode, batch_size=3)
    plan = plan_tiles(shape, (16, 32, 24), 0.5, 8)
    assert plan.n_tiles > 20
    exact = ~_contaminated(plan, radius=2)
    exact[:2] = exact[-2:] = exact[:, :2] = exact[:, -2:] = exact[:, :, :2] = exact[:, :, -2:] = False
    assert exact.mean() > 0.1
    np.testing.assert_allclose(tiled[:, exact], whole[:, exact], atol=1e-5)
    if mode == "gaussian":  # tile borders get little weight, so the rest stays close too
        interior = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
        assert np.abs(tiled - whole)[interior].max() < 2e-3


def test_batch_size_does_not_change_the_result():
    model = _two_layer_conv(2)
    volume = _random_volume((24, 40, 40), seed=6)
    outs = [
        predict_volume([_member(model, 2)], volume, tile_zyx=(16, 16, 24), overlap=0.25, batch_size=b)
        for b in (1, 4, 100)
    ]
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-6)


def test_volume_smaller_than_tile_is_reflect_padded_to_the_stride_and_cropped():
    model = _two_layer_conv(3)
    volume = _random_volume((20, 40, 30), seed=7)
    out = predict_volume([_member(model, 2, stride=16)], volume, tile_zyx=(64, 128, 128))
    assert plan_tiles((20, 40, 30), (64, 128, 128), 0.25, 16).tile_zyx == (32, 48, 32)
    padded = np.pad(volume, [(0, 0), (0, 12), (0, 8), (0, 2)], mode="reflect")
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(padded)[None]))[0, :, :20, :40, :30].numpy()
    assert out.shape == (2, 20, 40, 30)
    np.testing.assert_allclose(out, direct, atol=1e-5)


def test_reduced_precision_and_channels_last_stay_close_to_float32():
    model = _two_layer_conv(4)
    volume = _random_volume((16, 32, 32), seed=8)
    kwargs = dict(tile_zyx=(16, 16, 16), overlap=0.25)
    reference = predict_volume([_member(model, 2)], volume, amp=False, channels_last=False, **kwargs)
    fast = predict_volume([_member(model, 2)], volume, amp=True, channels_last=True, **kwargs)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=2e-2)


def test_cpu_default_runs_channels_last_with_the_float32_result():
    model = _two_layer_conv(6)
    volume = _random_volume((16, 32, 32), seed=10)
    kwargs = dict(tile_zyx=(16, 16, 16), overlap=0.25)
    plain = predict_volume([_member(model, 2)], volume, channels_last=False, **kwargs)
    assert model[2].weight.is_contiguous()
    default = predict_volume([_member(model, 2)], volume, **kwargs)
    assert model[2].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not model[2].weight.is_contiguous()
    np.testing.assert_allclose(default, plain, atol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    model = _two_layer_conv(5)
    volume = _random_volume((32, 64, 64), seed=9)
    kwargs = dict(tile_zyx=(16, 32, 32), overlap=0.25)
    cpu = predict_volume([_member(model, 2)], volume, device="cpu", **kwargs)
    cuda = predict_volume([_member(model, 2)], volume, device="cuda", **kwargs)
    np.testing.assert_allclose(cuda, cpu, atol=2e-2)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(tile_zyx=(16, 20, 16)), ConfigError, "stride 8"),
        (dict(tile_zyx=(16, 16)), ConfigError, "tile_zyx"),
        (dict(overlap=1.0), ConfigError, "overlap"),
        (dict(blend="cosine"), ConfigError, "gaussian, linear, constant"),
        (dict(batch_size=0), ConfigError, "batch_size"),
        (dict(device="cuda:0"), ConfigError, "CUDA"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, fragment):
    if kwargs.get("device") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    volume = _random_volume((16, 16, 16))
    with pytest.raises(error, match=fragment):
        predict_volume([_member(torch.nn.Conv3d(1, 2, 1), 2)], volume, **{"tile_zyx": (16, 16, 16), **kwargs})


def test_tile_side_not_multiple_of_member_stride_names_the_member():
    volume = _random_volume((32, 32, 32))
    member = EnsembleMember(torch.nn.Conv3d(1, 2, 1), ("a", "b"), ("denoised",), "sigmoid", stride=32, name="unet-r18")
    with pytest.raises(ConfigError, match=r"tile side 48 along y .*'unet-r18'.*stride 32"):
        predict_volume([member], volume, tile_zyx=(32, 48, 32))


@pytest.mark.parametrize("bad", [np.zeros((16, 16, 16), np.float32), np.zeros((2, 16, 16, 16), np.float32)])
def test_volume_of_wrong_rank_or_channels_is_refused(bad):
    with pytest.raises(DataError, match="volume"):
        predict_volume([_member(torch.nn.Conv3d(1, 2, 1), 2)], bad, tile_zyx=(16, 16, 16))
