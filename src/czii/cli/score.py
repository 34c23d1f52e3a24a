"""``czii score``: score a submission CSV against truth picks with the competition metric."""

from __future__ import annotations

import argparse
import json
import sys



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, help="submission CSV (experiment, particle_type, x, y, z in Å)")
    parser.add_argument(
        "--solution", required=True, help="truth picks: a CSV, a copick config JSON or a Kaggle competition directory"
    )
    parser.add_argument("--split", choices=("train", "test"), help="split of a Kaggle directory (default: train)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    from czii.data import load_solution  # copick, pandas, scipy: imported only when scoring
    from czii.metric import format_table, score
    from czii.particles import known_names
    from czii.picks import check_picks_table
    from czii.submission import check_experiments, read_submission, validate_submission

    submission = read_submission(args.submission)
    validate_submission(submission)  # what Kaggle checks before scoring: columns, unique integer ids, finite x, y, z
    solution = check_picks_table(load_solution(args.solution, split=args.split), "solution", known=known_names())
    warning = check_experiments(submission, solution, args.submission, args.solution)
    report = score(solution, submission)
    if warning:
        print(warning, file=sys.stderr)
    print(json.dumps(report.to_dict()) if args.json else format_table(report))
    return 0
