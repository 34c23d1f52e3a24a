"""Inference core: sliding-window, TTA and ensemble prediction of whole volumes (torch/numpy only).

``predict_volume(members, volume_czyx, ...) -> float32[C, Z, Y, X]`` is the entry point;
see :mod:`czii.inference.ensemble`, :mod:`czii.inference.tiling`, :mod:`czii.inference.tta`.
A :class:`czii.predictor.PredictorSpec` comes to life as :class:`Predictor`
(:mod:`czii.inference.predictor`). End to end (spec + dataset → submission CSV + manifest, one
process or torchrun): :func:`run_inference` in :mod:`czii.inference.pipeline`, runs dealt over
ranks by :mod:`czii.inference.sharding`.
"""

from czii.inference.ensemble import EnsembleMember, check_compatible, predict_volume
from czii.inference.pipeline import InferenceResult, manifest_path, resolve_predictor, run_inference
from czii.inference.predictor import Predictor, checkpoints_spec
from czii.inference.sharding import gather_outcomes, shard_runs
from czii.inference.tiling import TilePlan, blend_window, plan_tiles, sliding_window
from czii.inference.tta import apply_tta, invert_tta

__all__ = [
    "EnsembleMember",
    "InferenceResult",
    "Predictor",
    "TilePlan",
    "apply_tta",
    "blend_window",
    "check_compatible",
    "checkpoints_spec",
    "gather_outcomes",
    "invert_tta",
    "manifest_path",
    "plan_tiles",
    "predict_volume",
    "resolve_predictor",
    "run_inference",
    "shard_runs",
    "sliding_window",
]
