"""``czii tune``: tune per-class thresholds on a run directory's out-of-fold candidates.

Prints the score at the default thresholds, the tuned score in-sample (optimistic: tuned and
scored on the same runs) and cross-fitted (honest: each fold scored with thresholds tuned on
the other folds), a per-class table, and writes ``<run-dir>/thresholds.json`` (or ``--out``)
with the hash and recipe of the predictor spec the candidates were made with: what
``czii infer --models <run-dir>`` then ships. ``--set infer.tta=full16`` (any ``infer.*`` or
``postprocess.*`` key) or ``--repredict`` first predicts every fold's held-out runs again with
its ``best.pt`` under the changed spec (needs the training data: the run's config, or ``--data``).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from czii.cli import add_device_argument, add_force_argument, chosen_device



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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the shipped predictor (infer.* or postprocess.* keys, e.g. infer.tta=full16) "
                             "and predict the out-of-fold runs again under it before tuning; repeatable")
    parser.add_argument("--repredict", action="store_true",
                        help="predict the out-of-fold runs again under the run's spec even without --set")
    parser.add_argument("--data", nargs="+", metavar="PATH", help="training data for re-predicting (default: the "
                        "run config's sources)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="tune on folds whose training did not run every planned epoch (recorded in the file)")
    add_device_argument(parser)
    parser.add_argument("--tolerance", type=float, default=None, metavar="F",
                        help="F-beta a class may give up for a lower, recall-side threshold (default "
                             "czii.postprocess.thresholds.TOLERANCE = 0.05; 0 = the exact argmax)")
    parser.add_argument("--margin", type=float, default=None, metavar="M",
                        help="no threshold below M × the score of the weakest out-of-fold truth point it keeps "
                             "(default czii.postprocess.thresholds.MARGIN = 0.5; 0 = off)")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="average the thresholds tuned on N resamples of the runs drawn with replacement "
                             "(default czii.postprocess.thresholds.BOOTSTRAP = 50; 0 = tune once)")
    add_force_argument(parser)
    parser.add_argument(
        "--grid",
        type=_grid,
        default=None,
        metavar="exact|START:STOP:STEP",
        help="thresholds to try: every distinct candidate score (exact, default) "
        "or an inclusive grid, e.g. 0.05:0.6:0.01",
    )


def run(args: argparse.Namespace) -> int:
    from czii.postprocess.thresholds import tune_run_dir

    if args.overrides or args.repredict:
        from czii.training.oof import repredict_run_dir

        spec = repredict_run_dir(args.run_dir, overrides=args.overrides, data=args.data, device=chosen_device(args),
                                 force=args.force)
        print(f"re-predicted the out-of-fold runs under predictor spec {spec.hash}")
    from czii.postprocess.thresholds import BOOTSTRAP, MARGIN, TOLERANCE

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    margin = MARGIN if args.margin is None else args.margin
    bootstrap = BOOTSTRAP if args.bootstrap is None else args.bootstrap
    rep = tune_run_dir(args.run_dir, out=args.out, grid=args.grid, allow_unfinished=args.allow_unfinished,
                       tolerance=tolerance, margin=margin, bootstrap=bootstrap, force=args.force)
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
    print(f"wrote {rep.path} (tuned under predictor spec {rep.spec_hash})")
    return 0
