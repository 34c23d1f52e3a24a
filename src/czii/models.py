"""Model factory and checkpoints: 3D U-Nets from ``segmentation_models_pytorch_3d``.

:func:`build_model` assembles the smp-3d U-Net parts (encoder, ``UnetDecoder``,
``SegmentationHead``) with random weights (``encoder_weights=None``: nothing is ever
downloaded). smp-3d's ``Unet`` class itself cannot build an encoder shallower than 5
stages (its encoder needs five strides, its decoder one per stage), hence the assembly.
Encoder modules that the configured depth never runs (and heads the encoders keep from
classification, e.g. EfficientNet's ``_conv_head``) are replaced by ``nn.Identity`` so
that every parameter is trained (DistributedDataParallel needs that) and checkpoints
stay small.

``model.input_stride: 2`` puts a space-to-depth step in front: each 2×2×2 block of input voxels
becomes 8 channels of one voxel, the U-Net runs at twice the voxel size, and its logits are
upsampled ×2 (trilinear, ``align_corners=False``) back to the input grid. The geometry is exact:
a block's centre sits half an input voxel past its first voxel, and that upsampling reads output
voxel ``i`` at block coordinate ``i/2 - 1/4``, i.e. at input coordinate ``i``. So the network
sees the input's fine detail (an apo-ferritin cavity, beta-galactosidase lobes at 10 Å) with its
body on the coarser grid, and everything downstream (targets, tiles, peaks) stays on the input
grid. The stem takes 8× the channels and the loss runs on the input grid: on 2 CPU cores an epoch
of ``cpu_15min`` at level 0 with it took 2.3× as long as at level 1 without it.

``model.output_stride: 2`` drops the decoder's last, full-resolution block (the first-place
solution's half-resolution output): the head works on the stride-2 grid of the stem's skip features
and :func:`upsample_strided` brings its logits back to the input grid. A strided convolution's
voxel ``j`` is centred on input voxel ``2j`` (not ``2j + 1/2`` as a space-to-depth block), so that
upsampling reads input voxel ``i`` at grid coordinate ``i/2`` (``align_corners=True`` on the grid
padded by one edge voxel). Targets, loss, tiles and peaks stay on the input grid. A full-resolution
block of few channels is what oneDNN computes worst on CPU: in ``cpu_15min`` (decoder 32-16-8 at 20 Å
voxels) it and the head took over half of a bf16, channels_last_3d training step on 2 cores; without
it a step took 0.081 s instead of 0.14–0.17 s (``benchmarks/ablation_cpu.md`` v11).

``model.deep_supervision`` adds a 1×1×1 head on every decoder level but the last (network strides
``2^(depth-1)`` … 2). In training mode the model then returns ``(logits, [coarse logits, finest
first])`` and the loss (:class:`czii.training.losses.DeepSupervision`) adds each coarse level against
the targets averaged down to its grid; in eval mode it returns the logits alone, so inference, TTA and
checkpoints read it like any model (the heads' weights ride along in the checkpoint).

A checkpoint (:func:`save_checkpoint`, written atomically) is a dict with ``model_config``,
``classes``, ``input_channels``, ``activation``, ``normalisation``, ``level``, ``stride``,
``state_dict``, ``ema_state_dict`` (or None), ``epoch``, ``config`` and optional resume state.
:func:`load_checkpoint` returns the model (EMA weights when present) in eval mode and that
metadata.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from czii.config import ModelConfig, decoder_blocks
from czii.errors import ConfigError, DataError
from czii.io import atomic_path
from czii.particles import register_records
from czii.registry import network_stride

with warnings.catch_warnings():  # timm, imported by smp-3d, scripts functions with the deprecated torch.jit
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
    from segmentation_models_pytorch_3d.base import SegmentationHead
    from segmentation_models_pytorch_3d.base import initialization as smp_init
    from segmentation_models_pytorch_3d.decoders.unet.decoder import UnetDecoder
    from segmentation_models_pytorch_3d.encoders import encoders as smp_encoders
    from segmentation_models_pytorch_3d.encoders import get_encoder

_STAGE_STRIDES_ZYX = ((2, 2, 2),) * 5
CHECKPOINT_KEYS = ("model_config", "classes", "input_channels", "activation", "state_dict")


@functools.cache
def supported_encoders() -> tuple[str, ...]:
    """Encoder names that build as a 3D U-Net here (smp-3d encoders that accept per-stage strides)."""

    def takes_strides(cls) -> bool:
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and "strides" in inspect.signature(klass.__init__).parameters:
                return True
        return False

    return tuple(name for name, spec in smp_encoders.items() if takes_strides(spec["encoder"]))


def stride(model_cfg: ModelConfig) -> int:
    """The network stride: every input side must be a multiple of it (input_stride * 2**encoder_depth)."""
    return network_stride(model_cfg.encoder_depth, model_cfg.input_stride)


def space_to_depth(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, C, Z, Y, X] → [B, C·block³, Z/block, Y/block, X/block]: each block's voxels as channels."""
    b, c, z, y, w = x.shape
    x = x.reshape(b, c, z // block, block, y // block, block, w // block, block)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * block**3, z // block, y // block, w // block)


def upsample_strided(logits: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, Z, Y, X] on a grid whose voxel ``j`` sits at input voxel ``factor * j`` (a strided
    convolution's output) → [B, C, factor·Z, factor·Y, factor·X] on the input grid, trilinear: input
    voxel ``i`` reads grid coordinate ``i / factor``; past the last grid voxel the edge value holds."""
    padded = nn.functional.pad(logits, (0, 1, 0, 1, 0, 1), mode="replicate")
    sides = [factor * s for s in logits.shape[2:]]
    up = nn.functional.interpolate(padded, size=[s + 1 for s in sides], mode="trilinear", align_corners=True)
    return up[..., : sides[0], : sides[1], : sides[2]]


class Unet3d(nn.Module):
    """[space-to-depth →] encoder → U-Net decoder → 3×3×3 head [→ ×input_stride or ×output_stride
    upsampling]; logits [B, out_channels, Z, Y, X] at the input size (and, in training with
    ``aux_heads``, the coarse decoder levels' logits, finest first)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, input_stride: int = 1,
                 output_stride: int = 1) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = head
        self.input_stride = input_stride
        self.output_stride = output_stride
        self.aux_heads: nn.ModuleList | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if self.input_stride > 1:
            x = space_to_depth(x, self.input_stride)
        features = self.encoder(x)
        if self.aux_heads is not None and self.training:
            levels = self._decoder_levels(features)
            aux = [head(level) for head, level in zip(self.aux_heads, levels[-2::-1])]
            return self._upsample(self.segmentation_head(levels[-1])), aux
        return self._upsample(self.segmentation_head(self.decoder(*features)))

    def _decoder_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every decoder block's output, coarsest first (smp-3d's ``UnetDecoder.forward``, keeping them)."""
        features = features[1:][::-1]
        x = self.decoder.center(features[0])
        levels = []
        for i, block in enumerate(self.decoder.blocks):
            x = block(x, features[i + 1] if i + 1 < len(features) else None)
            levels.append(x)
        return levels

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.output_stride > 1:
            return upsample_strided(logits, self.output_stride)
        if self.input_stride == 1:
            return logits
        return nn.functional.interpolate(logits, scale_factor=self.input_stride, mode="trilinear",
                                         align_corners=False)


def _prune_unused(model: nn.Module, probe_side: int, in_channels: int) -> None:
    """Replace parameter-holding submodules that a forward pass never reaches by ``nn.Identity``."""
    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: called.add(id(mod))) for m in model.modules()]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, probe_side, probe_side, probe_side))
    for h in hooks:
        h.remove()
    model.train(was_training)

    def prune(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if not any(id(m) in called for m in child.modules()) and any(True for _ in child.parameters()):
                setattr(parent, name, nn.Identity())
            else:
                prune(child)

    prune(model)


def build_model(model_cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """A randomly initialised 3D U-Net for ``model_cfg`` (ConfigError for an unknown encoder)."""
    name, depth = model_cfg.encoder_name, model_cfg.encoder_depth
    if name not in supported_encoders():
        raise ConfigError(f"model.encoder_name: unknown encoder {name!r}; supported: {', '.join(supported_encoders())}")
    n_blocks = decoder_blocks(model_cfg)
    if len(model_cfg.decoder_channels) != n_blocks:
        raise ConfigError(f"model.decoder_channels: needs {n_blocks} entries (one per decoder block), "
                          f"got {model_cfg.decoder_channels}")
    encoder = get_encoder(name, in_channels=in_channels * model_cfg.input_stride**3, depth=depth, weights=None,
                          strides=_STAGE_STRIDES_ZYX)
    decoder = UnetDecoder(
        encoder_channels=encoder.out_channels,
        decoder_channels=list(model_cfg.decoder_channels),
        n_blocks=n_blocks,
        use_batchnorm=True,
        center=name.startswith("vgg"),
        attention_type=model_cfg.decoder_attention_type,
        strides=_STAGE_STRIDES_ZYX[:n_blocks],
    )
    head = SegmentationHead(in_channels=model_cfg.decoder_channels[-1], out_channels=out_channels, kernel_size=3)
    smp_init.initialize_decoder(decoder)
    smp_init.initialize_head(head)
    model = Unet3d(encoder, decoder, head, model_cfg.input_stride, model_cfg.output_stride)
    _prune_unused(model, max(32, stride(model_cfg)), in_channels)
    if model_cfg.deep_supervision:  # after pruning: eval-mode probes never reach them
        model.aux_heads = nn.ModuleList(nn.Conv3d(c, out_channels, kernel_size=1)
                                        for c in model_cfg.decoder_channels[-2::-1])
    return model


def output_channels(classes: list[str] | tuple[str, ...], activation: str) -> int:
    """Logit channels: one per class for sigmoid, plus background (index 0) for softmax."""
    return len(classes) + (activation == "softmax")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (see the module docstring) to ``path`` atomically (temp file + rename)."""
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (DataError naming the file when missing or not a czii checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DataError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DataError(f"{path}: not a czii checkpoint (missing {missing})")
    register_records(ckpt.get("particles", []))  # the classes it was trained on, with their radii and weights
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on ``device`` carrying the EMA weights when present, metadata without weights)."""
    ckpt = read_checkpoint(path, device)
    model_cfg = ModelConfig(**ckpt["model_config"])
    model = build_model(model_cfg, len(ckpt["input_channels"]), output_channels(ckpt["classes"], ckpt["activation"]))
    weights = ckpt.get("ema_state_dict") or ckpt["state_dict"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit model_config {ckpt['model_config']} ({exc})") from None
    model.to(device).eval()
    return model, checkpoint_meta(ckpt)


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata without its weights, with the network's ``stride``."""
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "ema_state_dict", "resume")}
    meta["stride"] = stride(ModelConfig(**ckpt["model_config"]))
    return meta
