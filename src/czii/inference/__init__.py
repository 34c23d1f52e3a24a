"""Inference core: sliding-window, TTA and ensemble prediction of whole volumes (torch/numpy only).

``predict_volume(members, volume_czyx, ...) -> float32[C, Z, Y, X]`` is the entry point;
see :mod:`czii.inference.ensemble`, :mod:`czii.inference.tiling`, :mod:`czii.inference.tta`.
End to end (models + dataset → submission CSV + manifest, one process or torchrun):
:func:`run_inference` in :mod:`czii.inference.pipeline`, runs dealt over ranks by :mod:`czii.inference.sharding`.
"""

from czii.inference.ensemble import EnsembleMember, check_compatible, predict_volume
from czii.inference.pipeline import (
    InferenceResult,
    ModelSource,
    manifest_path,
    resolve_models,
    run_inference,
)
from czii.inference.sharding import gather_outcomes, shard_runs
from czii.inference.tiling import BLEND_MODES, TilePlan, blend_window, plan_tiles, sliding_window
from czii.inference.tta import PRIMITIVES, TTA_PRESETS, apply_tta, invert_tta, resolve_tta

__all__ = [
    "BLEND_MODES",
    "PRIMITIVES",
    "TTA_PRESETS",
    "EnsembleMember",
    "InferenceResult",
    "ModelSource",
    "TilePlan",
    "apply_tta",
    "blend_window",
    "check_compatible",
    "gather_outcomes",
    "invert_tta",
    "manifest_path",
    "plan_tiles",
    "predict_volume",
    "resolve_models",
    "resolve_tta",
    "run_inference",
    "shard_runs",
    "sliding_window",
]
