"""``czii export``: a submission CSV from ``czii infer`` → RELION 5 STAR, RELION 4 / Warp STAR, Dynamo .tbl or CSV."""

from __future__ import annotations

import argparse

FORMAT_HELP = ("star: RELION 5 (rlnCenteredCoordinate*Angst, Å from the tomogram centre); relion4: RELION 4 / Warp "
               "(rlnCoordinate* in pixels, rlnPixelSize); tbl: Dynamo table (+ <FILE>.czii.json naming tomograms "
               "and classes); csv: experiment, particle_type, x, y, z (Å), score")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, metavar="CSV",
                        help="submission CSV written by `czii infer` (its .scores.csv and .manifest.json beside it)")
    parser.add_argument("--format", required=True, choices=("star", "relion4", "tbl", "csv"), help=FORMAT_HELP)
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write")
    parser.add_argument("--particles", nargs="+", metavar="NAME", help="export only these particle types")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from czii.exchange import export_submission

    written, n = export_submission(args.submission, args.format, args.out, overwrite=args.overwrite,
                                   particles=args.particles)
    print(f"wrote {n} picks as {args.format}: {', '.join(map(str, written))}")
    return 0
