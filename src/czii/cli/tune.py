"""``czii tune``: tune per-class thresholds on a run directory's out-of-fold candidates.

Prints the score at the default thresholds, the tuned score in-sample (optimistic: tuned and
scored on the same runs) and cross-fitted (honest: each fold scored with thresholds tuned on
the other folds), a per-class table, and writes ``<run-dir>/thresholds.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from czii.postprocess.thresholds import tune_run_dir


def _grid(text: str) -> np.ndarray | None:
    """``exact`` → None (every distinct candidate score); ``START:STOP:STEP`` → inclusive grid."""
    if text == "exact":
        return None
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'exact' or START:STOP:STEP, got {text!r}") from None
    if not (0 <= start <= stop <= 1 and step > 0):
        raise argparse.ArgumentTypeError(f"need 0 <= START <= STOP <= 1 and STEP > 0, got {text!r}")
    return np.round(np.arange(start, stop + step / 2, step), 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir", required=True, help="training run directory with fold<K>/oof/{candidates,truth}.csv"
    )
    parser.add_argument("--out", help="thresholds JSON to write (default: <run-dir>/thresholds.json)")
    parser.add_argument(
        "--grid",
        type=_grid,
        default=None,
        metavar="exact|START:STOP:STEP",
        help="thresholds to try: every distinct candidate score (exact, default) "
        "or an inclusive grid, e.g. 0.05:0.6:0.01",
    )


def run(args: argparse.Namespace) -> int:
    rep = tune_run_dir(args.run_dir, out=args.out, grid=args.grid)
    n_runs = sum(len(r) for r in rep.folds.values())
    print(
        f"{args.run_dir}: {len(rep.folds)} fold(s), {n_runs} runs, "
        f"{rep.n_candidates} candidates, {rep.n_truth} truth picks"
    )
    for name in rep.skipped:
        print(f"  skipped {name}: no oof/ files")
    print(f"score at default thresholds:              {rep.score_default:.4f}")
    print(f"score with tuned thresholds, in-sample:    {rep.score_in_sample:.4f}"
          "  (optimistic: tuned on the runs it scores)")
    if rep.score_cross_fitted is None:
        print("score with tuned thresholds, cross-fitted: n/a"
              "  (cross-fitting needs >= 2 folds; only the in-sample number is available)")
    else:
        print(f"score with tuned thresholds, cross-fitted: {rep.score_cross_fitted:.4f}"
              "  (honest: each fold tuned on the other folds)")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(rep.per_class.to_string(index=False))
    print(f"wrote {rep.path}")
    return 0
