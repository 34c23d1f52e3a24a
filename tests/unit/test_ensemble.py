"""Ensembles: weighted probability averages, softmax background dropped, incompatible members refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from czii.errors import ConfigError
from czii.inference import EnsembleMember, check_compatible, predict_volume

CLASSES = ("apo-ferritin", "ribosome", "thyroglobulin")
TILE = (16, 32, 32)


def _conv(out_channels: int, seed: int, kernel: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(1, out_channels, kernel_size=kernel, padding=kernel // 2)


def _member(model, name, activation="sigmoid", weight=1.0, classes=CLASSES, channels=("denoised",)):
    return EnsembleMember(model, classes, channels, activation, weight=weight, stride=16, name=name)


def _volume(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 16, 32, 32)).astype(np.float32)


def _direct(model: torch.nn.Module, volume: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(volume)[None])[0]


def test_weighted_average_equals_hand_computed_average():
    a, b = _conv(3, 0, kernel=3), _conv(3, 1, kernel=3)
    volume = _volume(1)
    out = predict_volume([_member(a, "a", weight=1.0), _member(b, "b", weight=3.0)], volume, tile_zyx=TILE)
    expected = (1.0 * torch.sigmoid(_direct(a, volume)) + 3.0 * torch.sigmoid(_direct(b, volume))) / 4.0
    assert out.shape == (3, 16, 32, 32)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
    single = predict_volume([_member(a, "a")], volume, tile_zyx=TILE)
    assert np.abs(out - single).max() > 1e-2  # the second member really counts


def test_softmax_member_drops_background_channel():
    model = _conv(len(CLASSES) + 1, 2)
    volume = _volume(2)
    out = predict_volume([_member(model, "soft", activation="softmax")], volume, tile_zyx=TILE)
    expected = torch.softmax(_direct(model, volume), dim=0)[1:]
    assert out.shape == (len(CLASSES), 16, 32, 32)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
    assert (out.sum(axis=0) < 1.0).all()


def test_softmax_and_sigmoid_members_average_as_probabilities():
    soft, sig = _conv(len(CLASSES) + 1, 3), _conv(len(CLASSES), 4)
    volume = _volume(3)
    members = [_member(soft, "soft", activation="softmax", weight=2.0), _member(sig, "sig", weight=0.5)]
    out = predict_volume(members, volume, tile_zyx=TILE, tta="flips")
    expected = (2.0 * torch.softmax(_direct(soft, volume), 0)[1:] + 0.5 * torch.sigmoid(_direct(sig, volume))) / 2.5
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_mismatched_classes_are_refused_naming_members():
    other = ("apo-ferritin", "ribosome", "virus-like-particle")
    members = [_member(_conv(3, 0), "unet-a"), _member(_conv(3, 0), "unet-b", classes=other)]
    with pytest.raises(ConfigError) as err:
        check_compatible(members)
    message = str(err.value)
    assert "classes" in message and "'unet-a'" in message and "'unet-b'" in message
    assert "virus-like-particle" in message


def test_mismatched_input_channels_are_refused_naming_members():
    members = [_member(_conv(3, 0), "den"), _member(_conv(3, 0), "wbp", channels=("wbp",))]
    with pytest.raises(ConfigError, match=r"input_channels.*'den': denoised.*'wbp': wbp"):
        predict_volume(members, _volume(), tile_zyx=TILE)


def test_empty_ensemble_is_refused():
    with pytest.raises(ConfigError, match="empty"):
        predict_volume([], _volume(), tile_zyx=TILE)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_weight_is_refused(weight):
    with pytest.raises(ConfigError, match=r"'w'.*weight"):
        check_compatible([_member(_conv(3, 0), "ok"), _member(_conv(3, 0), "w", weight=weight)])


def test_unknown_activation_is_refused():
    with pytest.raises(ConfigError, match=r"'m'.*activation 'relu'.*sigmoid, softmax"):
        check_compatible([_member(_conv(3, 0), "m", activation="relu")])


@pytest.mark.parametrize("activation, channels", [("sigmoid", 4), ("softmax", 3)])
def test_model_with_wrong_output_channels_is_refused(activation, channels):
    member = _member(_conv(channels, 0), "wrong", activation=activation)
    with pytest.raises(ConfigError, match=r"'wrong' returned logits of shape"):
        predict_volume([member], _volume(), tile_zyx=TILE)


def test_unknown_tta_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="unknown TTA transform 'flip_w'"):
        predict_volume([_member(_conv(3, 0), "m")], _volume(), tile_zyx=TILE, tta=("identity", "flip_w"))


class _Certain(torch.nn.Module):
    """Softmax logits that make the ribosome channel exactly 1.0 in float32 everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 4, *x.shape[2:]), -1e4)
        logits[:, 2] = 1e4
        return logits


def test_averaged_certain_probabilities_stay_within_0_1():
    """7 transforms x 3 weighted members x overlapping tiles sum 1/21-sized float32 shares: without the clip the
    sum overshoots 1 by an ulp, and peak detection refuses the volume."""
    members = [_member(_Certain(), f"m{i}", activation="softmax", weight=w) for i, w in enumerate((1.0, 3.0, 7.0))]
    out = predict_volume(members, _volume(2), tile_zyx=TILE, overlap=0.5, tta="flips_rot90")
    assert out.max() <= 1.0 and out.min() >= 0.0
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_a_tile_side_off_the_stride_is_refused_naming_the_member_and_the_axis():
    """Stride 16: a tile of 16 × 24 × 32 has a y side of 24, not a multiple of 16."""
    member = _member(_conv(len(CLASSES), 0), "m0")
    with pytest.raises(ConfigError, match=r"tile side 24 along y \(tile \[16, 24, 32\]\).*'m0'.*stride 16"):
        predict_volume([member], _volume(), tile_zyx=(16, 24, 32))
