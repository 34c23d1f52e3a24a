"""The CZII competition metric, re-implemented with the Kaggle scorer's quirks.

For every experiment of the solution and every particle type of the solution, each
prediction is ball-queried (KD-tree, distance ≤ ``distance_multiplier × radius_A``,
inclusive) against the truth points of that run and type. The *set* of truth points hit
is the true-positive count (a truth point counts once however many predictions hit it; a
prediction within range of two truth points scores both), ``fp = n_predictions − tp``
(negative in that edge case, kept as the scorer does) and ``fn = n_truth − tp``. Counts
are summed over runs per class before precision, recall and F-beta are computed; the score
is the weighted sum of F-beta over the classes present in the solution divided by the sum
of *all six* weights (beta-amylase weighs 0).

Submission rows of runs absent from the solution, or of types absent from it, are ignored;
an unknown particle type among the remaining rows, unknown types in the solution and
duplicate solution points (same experiment, x, y, z) raise SubmissionError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from czii.errors import SubmissionError
from czii.particles import BY_NAME, PARTICLE_NAMES, known_names, total_weight
from czii.picks import XYZ, check_picks_table, neighbours, preview, unknown_particle_types

TABLE_COLUMNS: tuple[str, ...] = ("tp", "fp", "fn", "precision", "recall", "f_beta", "weight")
BETA: float = 4.0  # the competition's: recall weighs 16 times precision


def precision_recall_fbeta(tp, kept, n_truth, beta: float = BETA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise precision = tp / kept, recall = tp / n_truth and F-beta, each 0 where its denominator is 0:
    the metric's per-class numbers and the threshold tuner's curves."""
    tp, kept, n_truth = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (tp, kept, n_truth)))
    # counts are whole numbers ≥ 0: where a denominator is 0 so is tp, and dividing by max(count, 1) gives 0
    precision = tp / np.maximum(kept, 1.0)
    recall = tp / np.maximum(n_truth, 1.0)
    denom = beta**2 * precision + recall
    f_beta = (1 + beta**2) * precision * recall / np.where(denom > 0, denom, 1.0)
    return precision, recall, f_beta


@dataclass
class ScoreReport:
    """Weighted F-beta ``score`` and the per-class ``table`` (index: the six particle types)."""

    score: float
    table: pd.DataFrame
    beta: float = BETA

    def to_dict(self) -> dict:
        """JSON-ready: ``{"score", "beta", "classes": {name: {tp, fp, fn, precision, recall, f_beta, weight}}}``."""
        classes = {
            r.Index: {
                "tp": int(r.tp),
                "fp": int(r.fp),
                "fn": int(r.fn),
                "precision": float(r.precision),
                "recall": float(r.recall),
                "f_beta": float(r.f_beta),
                "weight": float(r.weight),
            }
            for r in self.table.itertuples()
        }
        return {"score": float(self.score), "beta": float(self.beta), "classes": classes}


def score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    *,
    beta: float = BETA,
    distance_multiplier: float = 0.5,
) -> ScoreReport:
    """Score ``submission`` against ``solution`` (both: experiment, particle_type, x, y, z in Å)."""
    solution = check_picks_table(solution, "solution")
    submission = check_picks_table(submission, "submission")
    bad = unknown_particle_types(solution)
    if bad:
        raise SubmissionError(f"solution has unknown particle types {bad}; known: {list(known_names())}")
    dup = solution.duplicated(subset=["experiment", *XYZ], keep=False).to_numpy()
    if dup.any():
        raise SubmissionError(
            f"solution has {int(dup.sum())} rows with duplicate (experiment, x, y, z): "
            f"rows {preview(solution.index[dup])}"
        )
    runs = sorted(solution["experiment"].unique())
    submission = submission[submission["experiment"].isin(runs)]
    bad = unknown_particle_types(submission)
    if bad:
        raise SubmissionError(f"submission has unknown particle types {bad}; known: {list(known_names())}")
    classes = [*PARTICLE_NAMES, *sorted(set(solution["particle_type"]) - set(PARTICLE_NAMES))]

    submission = submission[submission["particle_type"].isin(set(solution["particle_type"]))]
    found = np.array([len(n) > 0 for n in neighbours(solution, submission, distance_multiplier=distance_multiplier)],
                     dtype=bool)
    counts = {name: np.zeros(3, dtype=np.int64) for name in classes}
    for name in solution["particle_type"].unique():
        of_class = (solution["particle_type"] == name).to_numpy()
        tp = int(found[of_class].sum())
        n_pred = int((submission["particle_type"] == name).sum())
        counts[name] += (tp, n_pred - tp, int(of_class.sum()) - tp)

    rows = []
    for name in classes:
        tp, fp, fn = (int(v) for v in counts[name])
        precision, recall, f_beta = (float(v) for v in precision_recall_fbeta(tp, tp + fp, tp + fn, beta))
        rows.append((tp, fp, fn, precision, recall, f_beta, BY_NAME[name].weight))
    table = pd.DataFrame(rows, index=pd.Index(classes, name="particle_type"), columns=list(TABLE_COLUMNS))
    total = float((table["f_beta"] * table["weight"]).sum() / total_weight(classes))
    return ScoreReport(score=total, table=table, beta=beta)


def format_table(report: ScoreReport) -> str:
    """Aligned per-class text table followed by the weighted score line."""
    f_name = f"F{report.beta:g}"
    header = ["particle_type", "TP", "FP", "FN", "precision", "recall", f_name, "weight"]
    body = [
        [r.Index, str(r.tp), str(r.fp), str(r.fn), f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.f_beta:.4f}",
         f"{r.weight:g}"]
        for r in report.table.itertuples()
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in body)]
    lines.append(f"weighted {f_name}: {report.score:.6f}")
    return "\n".join(lines)
