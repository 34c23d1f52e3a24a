"""Post-processing: probability volumes → scored picks, and per-class thresholds tuned on OOF candidates."""

from czii.postprocess.peaks import detect_peaks
from czii.postprocess.thresholds import (
    DEFAULT_THRESHOLDS,
    class_curves,
    cross_fitted_score,
    load_thresholds,
    save_thresholds,
    score_at,
    tune_thresholds,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "class_curves",
    "cross_fitted_score",
    "detect_peaks",
    "load_thresholds",
    "save_thresholds",
    "score_at",
    "tune_thresholds",
]
