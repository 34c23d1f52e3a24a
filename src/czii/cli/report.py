"""``czii report``: rebuild an experiment's figures from its saved outputs (no model is run)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True,
                        help="run directory with thresholds.json, fold*/oof/, fold*/history.csv, report/overlay.npz")


def run(args: argparse.Namespace) -> int:
    from czii.report import build_report

    report = build_report(args.run_dir)
    for path in report.written:
        print(f"wrote {path}")
    for figure, why in report.skipped.items():
        print(f"skipped {figure}: {why}")
    return 0
