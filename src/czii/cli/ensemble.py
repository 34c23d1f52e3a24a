"""``czii ensemble``: an ensemble YAML for ``czii infer`` from leaderboard rows, scored out-of-fold first."""

from __future__ import annotations

import argparse
import math

from czii.cli import add_device_argument, chosen_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", required=True, nargs="+", metavar="ROW",
                        help="leaderboard rows: experiment NAME, or NAME@HASH when a name has several rows")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per row (default: equal)")
    parser.add_argument("--out", required=True, metavar="YAML",
                        help="ensemble YAML to write, e.g. ensembles/<name>.yaml (its OOF files and thresholds "
                             "go to ensembles/<name>/)")
    parser.add_argument("--leaderboard", help="leaderboard CSV (default: submissions/leaderboard.csv)")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="dataset paths replacing the rows' data.sources[].path in order")
    add_device_argument(parser)
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="use rows whose training did not run every planned epoch")
    parser.add_argument("--workdir", help="where Kaggle picks are staged for copick (default: a cache folder)")


def run(args: argparse.Namespace) -> int:
    from czii.experiment import DEFAULT_LEADERBOARD, build_ensemble, row_id

    result = build_ensemble(args.rows, args.out, weights=args.weights,
                            leaderboard=args.leaderboard or DEFAULT_LEADERBOARD, data=args.data,
                            device=chosen_device(args), workdir=args.workdir,
                            allow_unfinished=args.allow_unfinished)
    tune = result.tune

    def fmt(value) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    print(f"{'member':<40} {'weight':>6} {'cv_tuned':>9}")
    for m in result.members:
        print(f"{row_id(m.row):<40} {m.weight:>6g} {fmt(m.row['cv_tuned']):>9}")
    print(f"ensemble out-of-fold: default {fmt(tune.score_default)}, tuned in-sample {fmt(tune.score_in_sample)}, "
          f"tuned cross-fitted {fmt(tune.score_cross_fitted)} (honest)")
    print(f"wrote {result.yaml_path} and {result.oof_dir}/ (fold*/oof/, thresholds.json)")
    return 0
