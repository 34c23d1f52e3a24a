"""Ensemble × TTA prediction of a whole volume.

Contract: :func:`predict_volume` ``(members, volume_czyx, ...)`` returns float32
``[C, Z, Y, X]`` probabilities for the members' common class list, where every tile's
prediction is ``Σ_m w_m · mean_t T_t⁻¹(act_m(model_m(T_t(tile)))) / Σ_m w_m``: each member's
activation is applied first, TTA is averaged in probability space, members are
weighted by :attr:`EnsembleMember.weight`. Tiles are blended by :mod:`czii.inference.tiling`.

Models are moved to ``device``, put in eval mode and in channels_last_3d memory in place
(on 2 CPU cores that runs a tile of the CPU configs' U-Net about 1.3× faster than NCDHW). On CUDA,
by default, they run under autocast (bf16 where supported, else fp16); on CPU autocast is
off by default (``amp=True`` on CPU autocasts to bf16, slower there than fp32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from czii.errors import ConfigError, DataError
from czii.inference.tiling import sliding_window
from czii.inference.tta import apply_tta, invert_tta
from czii.registry import ACTIVATIONS, resolve_tta



@dataclass
class EnsembleMember:
    """One model of an ensemble and what it needs and produces.

    ``model`` maps [B, len(input_channels), z, y, x] to logits [B, C_out, z, y, x] with
    C_out = len(classes) for ``sigmoid`` and len(classes) + 1 (background first) for
    ``softmax``; every tile side must be a multiple of ``stride``.
    """

    model: torch.nn.Module
    classes: tuple[str, ...]
    input_channels: tuple[str, ...]
    activation: str
    weight: float = 1.0
    stride: int = 32
    name: str = field(kw_only=True)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.input_channels = tuple(self.input_channels)


def _disagreement(members: Sequence[EnsembleMember], attribute: str) -> str | None:
    values = {getattr(m, attribute) for m in members}
    if len(values) == 1:
        return None
    listing = "; ".join(f"{m.name!r}: {', '.join(getattr(m, attribute)) or '(none)'}" for m in members)
    return f"ensemble members disagree on {attribute}: {listing}"


def check_compatible(members: Sequence[EnsembleMember]) -> None:
    """Refuse (ConfigError, naming the members) an ensemble that cannot be averaged."""
    if not members:
        raise ConfigError("the ensemble is empty: give at least one model")
    for m in members:
        if m.activation not in ACTIVATIONS:
            raise ConfigError(
                f"member {m.name!r}: unknown activation {m.activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        if not (math.isfinite(m.weight) and m.weight > 0):
            raise ConfigError(f"member {m.name!r}: weight must be a positive number, got {m.weight}")
        if isinstance(m.stride, bool) or not isinstance(m.stride, int) or m.stride < 1:
            raise ConfigError(f"member {m.name!r}: stride must be a positive integer, got {m.stride!r}")
        if not m.classes:
            raise ConfigError(f"member {m.name!r}: empty class list")
    for attribute in ("classes", "input_channels"):
        problem = _disagreement(members, attribute)
        if problem:
            raise ConfigError(problem)


def check_tile(members: Sequence[EnsembleMember], tile_zyx: Sequence[int]) -> None:
    """Refuse (ConfigError) a tile with a side that is not a multiple of some member's stride: the network
    could not run on it."""
    for m in members:
        for axis, side in zip("zyx", tile_zyx):
            if side % m.stride:
                raise ConfigError(
                    f"tile side {side} along {axis} (tile {list(tile_zyx)}) is not a multiple of member {m.name!r}'s "
                    f"stride {m.stride}; choose tile sides that are multiples of every member's stride"
                )


class _EnsemblePredictor:
    """Tile batch [B, C_in, z, y, x] → ensemble × TTA mean probabilities [B, C, z, y, x] float32."""

    def __init__(
        self,
        members: Sequence[EnsembleMember],
        tta: tuple[str, ...],
        device: torch.device,
        amp: bool,
        channels_last: bool,
    ) -> None:
        self.members = tuple(members)
        self.tta = tta
        self.device = device
        self.channels_last = channels_last
        self.amp = amp
        if device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = torch.bfloat16
        self.total_weight = sum(m.weight for m in self.members)
        for m in self.members:
            m.model.to(device).eval()
            if channels_last:
                m.model.to(memory_format=torch.channels_last_3d)

    def _probabilities(self, member: EnsembleMember, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = member.model(x)
        expected = len(member.classes) + (member.activation == "softmax")
        if logits.ndim != 5 or logits.shape[1] != expected or logits.shape[2:] != x.shape[2:]:
            raise ConfigError(
                f"member {member.name!r} returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(x.shape)}; expected [B, {expected}, {', '.join(map(str, x.shape[2:]))}] "
                f"({member.activation} over {len(member.classes)} classes"
                f"{' + background' if member.activation == 'softmax' else ''})"
            )
        logits = logits.float()
        if member.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)[:, 1:]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor | None = None
        for member in self.members:
            scale = member.weight / (self.total_weight * len(self.tta))
            for name in self.tta:
                probs = invert_tta(self._probabilities(member, apply_tta(x, name)), name)
                mean = probs * scale if mean is None else mean.add_(probs, alpha=scale)
        return mean


def predict_volume(
    members: Sequence[EnsembleMember],
    volume_czyx: np.ndarray,
    *,
    tile_zyx: tuple[int, int, int] = (64, 128, 128),
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 2,
    tta: str | Sequence[str] = ("identity",),
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    channels_last: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Ensemble × TTA probabilities float32 [C, Z, Y, X] of a normalised float32 [C_in, Z, Y, X] volume.

    ``tta`` is a list of transform names or a preset name (:data:`czii.inference.TTA_PRESETS`).
    ``amp`` defaults to on for CUDA and off for CPU. The result is clipped to
    [0, 1] (float32 averaging can overshoot by an ulp).
    """
    check_compatible(members)
    tta_names = resolve_tta(tta)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available here")
    input_channels = members[0].input_channels
    if not isinstance(volume_czyx, np.ndarray) or volume_czyx.ndim != 4:
        raise DataError(
            f"volume must be a numpy array [C_in, Z, Y, X], got "
            f"{type(volume_czyx).__name__} of shape {getattr(volume_czyx, 'shape', None)}"
        )
    if volume_czyx.shape[0] != len(input_channels):
        raise DataError(
            f"volume has {volume_czyx.shape[0]} channel(s) but the models expect "
            f"{len(input_channels)}: {', '.join(input_channels)}"
        )
    check_tile(members, tile_zyx)
    stride = math.lcm(*(m.stride for m in members))
    on_cuda = device.type == "cuda"
    predictor = _EnsemblePredictor(
        members,
        tta_names,
        device,
        amp=on_cuda if amp is None else amp,
        channels_last=channels_last,
    )
    with torch.inference_mode():
        probs = sliding_window(
            predictor,
            volume_czyx,
            len(members[0].classes),
            tile_zyx=tuple(tile_zyx),
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            stride=stride,
            device=device,
            progress=progress,
        )
    # averaging over members, transforms and overlapping tiles can leave a probability an ulp above 1
    return np.clip(probs, 0.0, 1.0, out=probs)
