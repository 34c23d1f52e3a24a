"""TTA transforms: exact inverses, agreement with numpy, presets, and their use in predict_volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from czii.errors import ConfigError
from czii.inference import EnsembleMember, apply_tta, invert_tta, predict_volume
from czii.registry import TTA_PRESETS, resolve_tta
from czii.registry import TTA_PRIMITIVES as PRIMITIVES

ALL_NAMES = sorted(set(PRIMITIVES) | {n for names in TTA_PRESETS.values() for n in names})


def _volume(shape=(2, 3, 5, 6, 8), seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_inverse_undoes_transform_exactly(name):
    x = _volume()
    y = apply_tta(x, name)
    assert torch.equal(invert_tta(y, name), x)
    assert name == "identity" or y.shape != x.shape or not torch.equal(y, x)


def test_transforms_match_numpy():
    x = _volume(seed=1)
    a = x.numpy()
    expected = {
        "flip_z": a[..., ::-1, :, :],
        "flip_y": a[..., :, ::-1, :],
        "flip_x": a[..., :, :, ::-1],
        "rot90_xy_1": np.rot90(a, 1, axes=(-2, -1)),
        "rot90_xy_3": np.rot90(a, 3, axes=(-2, -1)),
        "flip_z+rot90_xy_1": np.rot90(a[..., ::-1, :, :], 1, axes=(-2, -1)),
        "rot90_xy_1+flip_y": np.rot90(a, 1, axes=(-2, -1))[..., :, ::-1, :],
    }
    for name, want in expected.items():
        np.testing.assert_array_equal(apply_tta(x, name).numpy(), want, err_msg=name)


def test_preset_transforms_are_distinct():
    cube = _volume(shape=(1, 1, 4, 5, 5), seed=2)
    for preset, names in TTA_PRESETS.items():
        images = {apply_tta(cube, n).numpy().tobytes() for n in names}
        assert len(images) == len(names), preset
    assert TTA_PRESETS["none"] == ("identity",)
    assert len(TTA_PRESETS["full16"]) == 16


def test_resolve_accepts_presets_names_and_lists():
    assert resolve_tta("flips") == TTA_PRESETS["flips"]
    assert resolve_tta("flip_x") == ("flip_x",)
    assert resolve_tta(["identity", "flip_z+rot90_xy_2"]) == ("identity", "flip_z+rot90_xy_2")


@pytest.mark.parametrize("bad", ["flip_q", "rot90_xy_4", "flip_z+", "", ["identity", "mirror"]])
def test_unknown_transform_is_refused_with_valid_names(bad):
    with pytest.raises(ConfigError) as err:
        resolve_tta(bad)
    message = str(err.value)
    for valid in ("flip_z", "rot90_xy_1", "flips_rot90"):
        assert valid in message


def test_empty_tta_list_is_refused():
    with pytest.raises(ConfigError, match="empty TTA"):
        resolve_tta([])


def _member(model: torch.nn.Module, n_classes: int) -> EnsembleMember:
    return EnsembleMember(
        model.eval(),
        tuple(f"c{i}" for i in range(n_classes)),
        ("denoised",),
        "sigmoid",
        stride=16,
        name="m",
    )


def test_equivariant_model_gives_same_output_with_and_without_tta():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 3, kernel_size=1)
    volume = np.random.default_rng(3).normal(size=(1, 24, 32, 48)).astype(np.float32)
    kwargs = dict(tile_zyx=(16, 16, 32), overlap=0.5, batch_size=12)  # non-square y-x tile: rot90 swaps its sides
    plain = predict_volume([_member(pointwise, 3)], volume, tta=("identity",), **kwargs)
    augmented = predict_volume([_member(pointwise, 3)], volume, tta="full16", **kwargs)
    np.testing.assert_allclose(augmented, plain, atol=1e-5)


def test_tta_averages_inverted_predictions_in_probability_space():
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)  # not flip/rotation equivariant
    volume = np.random.default_rng(4).normal(size=(1, 16, 32, 48)).astype(np.float32)
    names = ("identity", "flip_y", "rot90_xy_1")
    # one tile covers the whole volume, so the result is the plain TTA mean
    out = predict_volume([_member(conv, 2)], volume, tile_zyx=(16, 32, 48), blend="constant", tta=names)
    x = torch.from_numpy(volume)[None]
    with torch.no_grad():
        by_hand = np.mean(
            [invert_tta(torch.sigmoid(conv(apply_tta(x, n))), n)[0].numpy() for n in names], axis=0
        )
        plain = torch.sigmoid(conv(x))[0].numpy()
    np.testing.assert_allclose(out, by_hand, atol=1e-5)
    assert np.abs(out - plain).max() > 1e-3  # the transforms really changed the prediction
