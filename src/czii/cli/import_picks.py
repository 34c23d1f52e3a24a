"""``czii import``: picks from RELION (STAR), Dynamo (.tbl) or a CSV → copick picks files that training reads."""

from __future__ import annotations

import argparse

from czii.cli.export import FORMAT_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--picks", required=True, metavar="FILE", help="STAR, .tbl or CSV file of picks")
    parser.add_argument("--format", required=True, choices=("star", "relion4", "tbl", "csv"), help=FORMAT_HELP)
    parser.add_argument("--into", required=True, metavar="PROJECT",
                        help="copick config JSON or Kaggle directory whose runs (same names) receive the picks")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="split of a Kaggle directory (default: train)")
    parser.add_argument("--particle", metavar="NAME",
                        help="particle type of every pick (for files without czii's class names)")
    parser.add_argument("--voxel-size", type=float, metavar="ANGSTROM",
                        help="pixel size of pixel coordinates (relion4, tbl), overriding the file's")
    parser.add_argument("--user", default="curation", help="copick user id (default: curation, what training reads)")
    parser.add_argument("--session", default="0", help="copick session id (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing picks files")


def run(args: argparse.Namespace) -> int:
    from czii.exchange import import_picks

    table = import_picks(args.picks, args.format, args.into, split=args.split, user_id=args.user,
                         session_id=args.session, particle=args.particle, voxel_size_A=args.voxel_size,
                         overwrite=args.overwrite)
    counts = table.groupby("particle_type").size()
    print(f"imported {len(table)} picks into {args.into} "
          f"({', '.join(f'{name} {n}' for name, n in counts.items())}) for {table['experiment'].nunique()} runs")
    return 0
