"""Inference core: sliding-window, TTA and ensemble prediction of whole volumes (torch/numpy only).

``predict_volume(members, volume_czyx, ...) -> float32[C, Z, Y, X]`` is the entry point;
see :mod:`czii.inference.ensemble`, :mod:`czii.inference.tiling`, :mod:`czii.inference.tta`.
"""

from czii.inference.ensemble import EnsembleMember, check_compatible, predict_volume
from czii.inference.tiling import BLEND_MODES, TilePlan, blend_window, plan_tiles, sliding_window
from czii.inference.tta import PRIMITIVES, TTA_PRESETS, apply_tta, invert_tta, resolve_tta

__all__ = [
    "BLEND_MODES",
    "PRIMITIVES",
    "TTA_PRESETS",
    "EnsembleMember",
    "TilePlan",
    "apply_tta",
    "blend_window",
    "check_compatible",
    "invert_tta",
    "plan_tiles",
    "predict_volume",
    "resolve_tta",
    "sliding_window",
]
