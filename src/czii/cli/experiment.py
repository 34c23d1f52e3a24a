"""``czii experiment``: train every fold of a config, tune thresholds, draw the report, write a leaderboard row."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from czii.cli import add_device_argument, add_force_argument, chosen_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (inherits configs/base.yaml via 'base:')")
    parser.add_argument("--name", help="experiment name: run folder <out>/<name> and leaderboard row "
                                       "(default: the config file's stem)")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="dataset paths replacing data.sources[].path in order (one per source)")
    parser.add_argument("--out", default="runs", help="folder of run directories (default: runs)")
    parser.add_argument("--folds", nargs="+", type=int, metavar="K", help="folds to train (default: every fold)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.epochs=3")
    add_device_argument(parser)
    parser.add_argument("--leaderboard", help="leaderboard CSV to update (default: submissions/leaderboard.csv)")
    parser.add_argument("--workdir", help="where Kaggle picks are staged for copick (default: a cache folder)")
    add_force_argument(parser)


def run(args: argparse.Namespace) -> int:
    from czii.config import load_config, with_data_paths
    from czii.experiment import DEFAULT_LEADERBOARD, row_id, run_experiment

    config = load_config(args.config, args.overrides)
    if args.data:
        config = with_data_paths(config, args.data)
    result = run_experiment(config, name=args.name or Path(args.config).stem, out_root=args.out, folds=args.folds,
                            device=chosen_device(args), leaderboard=args.leaderboard or DEFAULT_LEADERBOARD,
                            workdir=args.workdir, force=args.force)
    tune, row = result.tune, result.row
    print(f"{result.run_dir}: " + ", ".join(f"fold{k} {state}" for k, state in result.folds.items()))
    print(f"score at default thresholds:               {tune.score_default:.4f}")
    print(f"score with tuned thresholds, in-sample:     {tune.score_in_sample:.4f}  (optimistic)")
    if tune.score_cross_fitted is None:
        print("score with tuned thresholds, cross-fitted: n/a  (needs >= 2 folds)")
    else:
        print(f"score with tuned thresholds, cross-fitted: {tune.score_cross_fitted:.4f}  (honest: the headline)")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(tune.per_class.to_string(index=False))
    print(f"train {row['train_seconds']:.1f} s, held-out prediction {row['val_seconds']:.1f} s on {row['device']}")
    for path in result.report.written:
        print(f"wrote {path}")
    for figure, why in result.report.skipped.items():
        print(f"skipped {figure}: {why}")
    upsert = result.upsert
    if upsert.action == "appended":
        print(f"{result.leaderboard}: appended row {row_id(row)}")
    else:
        changed = f"scores changed: {', '.join(upsert.changed)}" if upsert.changed else "scores unchanged"
        print(f"{result.leaderboard}: replaced row {row_id(row)} ({changed})")
    return 0
