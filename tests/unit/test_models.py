"""Model factory and checkpoints: shapes, no unused parameters, EMA weights on load, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from czii.config import LossConfig, ModelConfig, load_config
from czii.errors import ConfigError, DataError
from czii.inference import predict_volume
from czii.inference.predictor import ensemble_member
from czii.models import (
    Unet3d,
    build_model,
    load_checkpoint,
    save_checkpoint,
    space_to_depth,
    stride,
    upsample_strided,
)
from czii.training.losses import DeepSupervision, HeatmapLoss

SMALL = ModelConfig(encoder_name="resnet18", encoder_depth=2, decoder_channels=[16, 8], decoder_attention_type=None)


def _checkpoint(model, ema=None, activation="sigmoid", classes=("apo-ferritin", "ribosome")):
    return {
        "model_config": {"encoder_name": SMALL.encoder_name, "encoder_depth": SMALL.encoder_depth,
                         "decoder_channels": SMALL.decoder_channels, "decoder_attention_type": None},
        "classes": list(classes),
        "input_channels": ["denoised"],
        "activation": activation,
        "normalisation": {"clip_percentiles": [0.5, 99.5]},
        "stride": stride(SMALL),
        "state_dict": model.state_dict(),
        "ema_state_dict": None if ema is None else ema.state_dict(),
        "epoch": 1,
    }


@pytest.mark.parametrize("depth,channels", [(2, [16, 8]), (3, [32, 16, 8])])
def test_output_shape_and_every_parameter_trains(depth, channels):
    cfg = ModelConfig("resnet18", depth, channels, None)
    assert stride(cfg) == 2**depth
    model = build_model(cfg, in_channels=2, out_channels=3)
    x = torch.randn(2, 2, 16, 24, 32)
    y = model(x)
    assert y.shape == (2, 3, 16, 24, 32)
    y.square().mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_input_stride_2_keeps_the_input_size_and_trains_every_parameter():
    cfg = ModelConfig("resnet18", 2, [16, 8], None, input_stride=2)
    assert stride(cfg) == 8
    model = build_model(cfg, in_channels=2, out_channels=3)
    assert model.encoder.conv1.in_channels == 16  # 2 channels × 8 voxels of a block
    y = model(torch.randn(2, 2, 16, 24, 32))
    assert y.shape == (2, 3, 16, 24, 32)
    y.square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    meta = {"classes": ["apo-ferritin", "ribosome", "thyroglobulin"], "activation": "sigmoid", "stride": stride(cfg),
            "input_channels": ["denoised", "wbp"]}
    member = ensemble_member(model.eval(), meta, name="input_stride 2")
    volume = np.random.default_rng(0).normal(size=(2, 13, 21, 27)).astype(np.float32)  # no side a multiple of 8
    probs = predict_volume([member], volume, tile_zyx=(8, 16, 16), overlap=0.25, batch_size=2)
    assert probs.shape == (3, 13, 21, 27) and np.all(np.isfinite(probs))


def test_output_stride_2_drops_the_full_resolution_block_keeps_the_input_size_and_survives_a_checkpoint(tmp_path):
    cfg = ModelConfig("resnet18", 3, [16, 8], None, output_stride=2)
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=1, out_channels=3)
    assert stride(cfg) == 8 and len(model.decoder.blocks) == 2
    assert model.segmentation_head[0].in_channels == 8
    x = torch.randn(2, 1, 16, 24, 32)
    y = model(x)
    assert y.shape == (2, 3, 16, 24, 32)
    y.square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():  # the head works on the stride-2 grid: logits are that grid upsampled
        coarse = model.segmentation_head(model.decoder(*model.encoder(x)))
        assert coarse.shape == (2, 3, 8, 12, 16)
        assert torch.allclose(y[..., ::2, ::2, ::2], coarse, atol=1e-5)
    path = tmp_path / "best.pt"
    save_checkpoint(path, _checkpoint(model, activation="softmax") | {"model_config": vars(cfg),
                                                "stride": stride(cfg), "classes": ["apo-ferritin", "ribosome"]})
    loaded, meta = load_checkpoint(path)
    assert meta["model_config"]["output_stride"] == 2
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_strided_upsampling_puts_each_grid_voxel_on_the_input_voxel_it_was_computed_at():
    """A strided convolution's voxel j is centred on input voxel 2j: a linear field sampled there and
    upsampled must give the field back (the last voxel of each side holds the edge); the
    ``align_corners=False`` upsampling of space-to-depth blocks would shift it by half a voxel."""
    z, y, x = np.meshgrid(np.arange(8.0), np.arange(12.0), np.arange(16.0), indexing="ij")
    field = torch.from_numpy(3 * z - 2 * y + x).float()[None, None]
    grid = field[..., ::2, ::2, ::2]
    out = upsample_strided(grid, 2)
    assert out.shape == field.shape
    assert torch.allclose(out[..., :-1, :-1, :-1], field[..., :-1, :-1, :-1], atol=1e-4)
    assert torch.equal(out[..., -1, -1, -1], field[..., -2, -2, -2])
    through_model = Unet3d(_Features(), _Subsample(), torch.nn.Identity(), output_stride=2)(field)
    assert torch.equal(through_model, out)
    shifted = torch.nn.functional.interpolate(grid, scale_factor=2, mode="trilinear", align_corners=False)
    assert not torch.allclose(shifted[..., 1:-1, 1:-1, 1:-1], field[..., 1:-1, 1:-1, 1:-1], atol=0.1)


def test_deep_supervision_adds_coarse_levels_in_training_only_and_survives_a_checkpoint(tmp_path):
    cfg = ModelConfig("resnet18", 3, [16, 8, 4], None, deep_supervision=True)
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=1, out_channels=3)
    x = torch.randn(2, 1, 16, 24, 32)
    logits, aux = model(x)
    assert logits.shape == (2, 3, 16, 24, 32)
    assert [a.shape for a in aux] == [(2, 3, 8, 12, 16), (2, 3, 4, 6, 8)]  # finest first
    target = torch.softmax(torch.randn(2, 3, 16, 24, 32), dim=1)
    DeepSupervision(HeatmapLoss(LossConfig("ce", None, 10.0, 1.0, 2.0), 2))((logits, aux), target).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():  # the decoder levels it keeps are smp-3d's decoder, block for block
        heads, model.aux_heads = model.aux_heads, None
        assert torch.equal(model(x), logits)
        model.aux_heads = heads
    path = tmp_path / "best.pt"
    save_checkpoint(path, _checkpoint(model, activation="softmax") | {
        "model_config": vars(cfg) | {"decoder_channels": [16, 8, 4]}, "stride": stride(cfg),
        "classes": ["apo-ferritin", "ribosome"]})
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        out = loaded(x)
        assert isinstance(out, torch.Tensor) and torch.equal(out, model.eval()(x))


def test_deep_supervision_compares_coarse_levels_with_block_means_of_the_targets():
    """MSE on sigmoid outputs is 0 only where a level's output equals its target: coarse outputs set to the
    2×2×2 / 4×4×4 block means of a sharp-edged target give 0, the same target merely subsampled does not."""
    loss = DeepSupervision(HeatmapLoss(LossConfig("mse", None, 1.0, 1.0, 2.0), 1))
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 3:6, 2:7, 1:4] = 0.9
    logit = lambda p: torch.log(p.clamp(1e-6, 1 - 1e-6) / (1 - p.clamp(1e-6, 1 - 1e-6)))  # noqa: E731
    means = [torch.nn.functional.avg_pool3d(target, k) for k in (2, 4)]
    assert loss((logit(target), [logit(m) for m in means]), target) < 1e-9
    subsampled = [target[..., ::k, ::k, ::k] for k in (2, 4)]
    assert loss((logit(target), [logit(m) for m in subsampled]), target) > 1e-3


class _Features(torch.nn.Module):
    def forward(self, x):
        return [x]


class _ChannelMean(torch.nn.Module):
    def forward(self, *features):
        return features[-1].mean(1, keepdim=True)


class _Subsample(torch.nn.Module):
    def forward(self, *features):
        return features[-1][..., ::2, ::2, ::2]


def test_space_to_depth_and_upsampling_keep_positions_on_the_input_grid():
    """Block means (space-to-depth, then the mean of a block's channels) upsampled back must give a
    linear field again where it was: a half-voxel slip of the block centres would shift it by 0.5."""
    z, y, x = np.meshgrid(np.arange(8.0), np.arange(12.0), np.arange(16.0), indexing="ij")
    field = torch.from_numpy(3 * z - 2 * y + x).float()[None, None]
    blocks = space_to_depth(field, 2)
    assert blocks.shape == (1, 8, 4, 6, 8)
    assert torch.equal(blocks[0, :, 1, 2, 3], field[0, 0, 2:4, 4:6, 6:8].reshape(-1))
    out = Unet3d(_Features(), _ChannelMean(), torch.nn.Identity(), input_stride=2)(field)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    assert torch.allclose(out[inner], field[inner], atol=1e-4)


def test_unknown_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet9000"):
        build_model(ModelConfig("resnet9000", 2, [16, 8], None), 1, 1)


def test_checkpoint_round_trip_prefers_ema_weights(tmp_path):
    torch.manual_seed(0)
    model = build_model(SMALL, 1, 2)
    ema = build_model(SMALL, 1, 2)  # different random weights stand in for the EMA
    path = tmp_path / "ckpt" / "best.pt"
    save_checkpoint(path, _checkpoint(model, ema))
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta["classes"] == ["apo-ferritin", "ribosome"] and meta["stride"] == 4
    assert "state_dict" not in meta
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), ema.eval()(x))
        assert not torch.equal(loaded(x), model.eval()(x))

    save_checkpoint(path, _checkpoint(model))
    no_ema, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(no_ema(x), model(x))


def test_member_from_checkpoint_predicts_a_volume(tmp_path):
    model = build_model(SMALL, 1, 3)
    path = tmp_path / "last.pt"
    save_checkpoint(path, _checkpoint(model, activation="softmax"))
    member = ensemble_member(*load_checkpoint(path), weight=2.0, name=str(path))
    assert member.activation == "softmax" and member.weight == 2.0 and member.stride == 4
    assert member.classes == ("apo-ferritin", "ribosome")
    probs = predict_volume([member], np.random.default_rng(0).normal(size=(1, 12, 20, 20)).astype(np.float32),
                           tile_zyx=(8, 16, 16), overlap=0.25, batch_size=2)
    assert probs.shape == (2, 12, 20, 20)
    assert np.all((probs >= 0) & (probs <= 1))


def test_bad_checkpoint_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="unreadable"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(DataError, match="not a czii checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.parametrize("name", ["resnet18.yaml", "resnet34.yaml", "effnetb3.yaml"])
def test_gpu_config_models_build_and_keep_the_input_size(name):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    model = build_model(cfg.model, len(cfg.data.input_channels), len(cfg.data.classes)).eval()
    side = stride(cfg.model)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, side, 2 * side, side)).shape == (1, 6, side, 2 * side, side)
