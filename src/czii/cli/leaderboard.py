"""``czii leaderboard``: print the experiments' leaderboard, best first."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--leaderboard", help="leaderboard CSV (default: submissions/leaderboard.csv)")
    parser.add_argument("--sort", default="cv_tuned", metavar="COLUMN",
                        help="column to rank by, highest first: a score (cv_tuned, cv_default, cv_tuned_in_sample, "
                             "f4_<class>), train_seconds, val_seconds, seed or timestamp (default: cv_tuned, the "
                             "cross-fitted tuned CV score)")
    parser.add_argument("--ascending", action="store_true", help="lowest first (e.g. for train_seconds)")
    parser.add_argument("--top", type=int, metavar="N", help="show only the first N rows")
    parser.add_argument("--per-class", action="store_true", help="add the per-class F4 columns")


def run(args: argparse.Namespace) -> int:
    from czii.experiment import DEFAULT_LEADERBOARD, format_leaderboard, read_leaderboard, sort_leaderboard

    path = args.leaderboard or DEFAULT_LEADERBOARD
    table = read_leaderboard(path)
    if table.empty:
        print(f"{path}: no rows yet (`czii experiment --config ...` adds one)")
        return 0
    rows = sort_leaderboard(table, args.sort, top=args.top, ascending=args.ascending)
    print(format_leaderboard(rows, per_class=args.per_class))
    return 0
