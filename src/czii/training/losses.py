"""Losses on logits ``[B, C_out, Z, Y, X]``; all return a scalar mean over voxels.

Sigmoid losses (targets ``[B, C, ...]`` in [0, 1]) weight each voxel by
``class_weight[c] · (1 + (pos_weight − 1) · y)``:

- ``bce``: binary cross-entropy;
- ``focal``: binary cross-entropy × ``(1 − p_t)^focal_gamma``;
- ``mse``: squared error of ``sigmoid(logit)`` against the heatmap.

``ce`` is the softmax cross-entropy over background + classes against ``[B, C + 1, ...]``
class probabilities (one-hot, or blended by mixup), with per-channel weights
``[background_weight, *class_weights]``.

:class:`DeepSupervision` wraps a loss for a model that also returns coarse decoder levels
(``model.deep_supervision``): the level at k-th coarser grid weighs ``2^-k`` against the targets
averaged over its voxel blocks, the weights normalised to sum to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from czii.config import LossConfig


def activation_for(loss_name: str) -> str:
    """The output activation a model trained with ``loss_name`` is read with (``ce``: softmax, else sigmoid)."""
    return "softmax" if loss_name == "ce" else "sigmoid"


class HeatmapLoss(torch.nn.Module):
    """The configured loss for ``n_classes`` particle classes (see the module docstring)."""

    def __init__(self, cfg: LossConfig, n_classes: int) -> None:
        super().__init__()
        self.name = cfg.name
        self.pos_weight = cfg.pos_weight
        self.gamma = cfg.focal_gamma
        class_w = torch.tensor(cfg.class_weights if cfg.class_weights is not None else [1.0] * n_classes)
        if cfg.name == "ce":
            class_w = torch.cat([torch.tensor([cfg.background_weight]), class_w])
        self.register_buffer("class_weights", class_w.float(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.name == "ce":
            return F.cross_entropy(logits, target, weight=self.class_weights)
        weight = self.class_weights.view(1, -1, 1, 1, 1) * (1 + (self.pos_weight - 1) * target)
        if self.name == "mse":
            per_voxel = (torch.sigmoid(logits) - target) ** 2
        else:
            per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            if self.name == "focal":
                p = torch.sigmoid(logits)
                p_t = p * target + (1 - p) * (1 - target)
                per_voxel = per_voxel * (1 - p_t) ** self.gamma
        return (per_voxel * weight).mean()


class DeepSupervision(torch.nn.Module):
    """``loss`` on ``(logits, [coarse logits, finest first])`` and the full-size targets (module docstring)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: tuple[torch.Tensor, list[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        logits, aux = outputs
        weights = [0.5**k for k in range(len(aux) + 1)]
        total = weights[0] * self.loss(logits, target)
        for w, coarse in zip(weights[1:], aux):
            block = [t // c for t, c in zip(target.shape[2:], coarse.shape[2:])]
            total = total + w * self.loss(coarse, F.avg_pool3d(target, block))
        return total / sum(weights)
