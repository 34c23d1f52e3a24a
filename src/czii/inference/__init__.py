"""Inference core: sliding-window, TTA and ensemble prediction of whole volumes (torch/numpy only).

``predict_volume(members, volume_czyx, ...) -> float32[C, Z, Y, X]`` is the entry point;
see :mod:`czii.inference.ensemble`, :mod:`czii.inference.tiling`, :mod:`czii.inference.tta`.
A :class:`czii.predictor.PredictorSpec` comes to life as :class:`Predictor`
(:mod:`czii.inference.predictor`). End to end (spec + dataset → submission CSV + manifest, one
process or torchrun): :func:`run_inference` in :mod:`czii.inference.pipeline`, runs dealt over
ranks by :mod:`czii.inference.sharding`.

The names below are loaded on first use, so that the prediction core runs without the data layer (copick)
installed: the GPU check (benchmarks/gpu/) carries only what it imports.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "EnsembleMember": "ensemble", "check_compatible": "ensemble", "predict_volume": "ensemble",
    "InferenceResult": "pipeline", "manifest_path": "pipeline", "resolve_predictor": "pipeline",
    "run_inference": "pipeline", "Predictor": "predictor", "checkpoints_spec": "predictor",
    "gather_outcomes": "sharding", "shard_runs": "sharding", "TilePlan": "tiling", "blend_window": "tiling",
    "plan_tiles": "tiling", "sliding_window": "tiling", "apply_tta": "tta", "invert_tta": "tta",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"czii.inference.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'czii.inference' has no attribute {name!r}")
