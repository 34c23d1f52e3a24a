"""``czii kaggle-build``: write the offline Kaggle dataset folder (wheels, checkpoints, thresholds, config).

Upload the folder as a Kaggle dataset and attach it to ``kaggle_notebooks/czii_submission.ipynb``
(see ``kaggle_notebooks/README.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from czii.cli import add_force_argument
from czii.registry import TTA_PRESETS
from czii.kaggle import KAGGLE_PLATFORMS, KAGGLE_PYTHON_VERSION, PROVIDED_PATTERNS, WheelTarget, build_kaggle_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, nargs="+", metavar="PATH",
                        help="a training run directory (every fold's best.pt; its thresholds.json), "
                             "checkpoint files (equal weights) or a predictor spec / ensemble YAML")
    parser.add_argument("--out", type=Path, default=Path("kaggle_dataset"),
                        help="folder to write (default: kaggle_dataset); a previous build there is replaced")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON_VERSION,
                        help=f"Python of the Kaggle image (default: {KAGGLE_PYTHON_VERSION})")
    parser.add_argument("--platform", dest="platforms", action="append", metavar="TAG",
                        help=f"manylinux platform tag of the Kaggle image, repeatable; older glibc tags are "
                             f"accepted too (default: {' '.join(KAGGLE_PLATFORMS)})")
    parser.add_argument("--wheels-from", type=Path, metavar="DIR",
                        help="take wheels from this folder first (then the per-target cache, then pip)")
    parser.add_argument("--tta", metavar="PRESET",
                        help=f"TTA preset ({', '.join(TTA_PRESETS)}) or comma-separated transforms; "
                             "default: the models' infer.tta")
    parser.add_argument("--thresholds", type=Path, metavar="FILE",
                        help="thresholds JSON to ship (default: the models' thresholds.json, else the defaults)")
    parser.add_argument("--allow-spec-mismatch", action="store_true",
                        help="ship thresholds tuned under another predictor spec (e.g. after --tta); recorded")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="ship models whose training did not run every planned epoch; recorded in the manifest")
    add_force_argument(parser)
    parser.epilog = f"Not bundled (assumed present on Kaggle): {', '.join(PROVIDED_PATTERNS)}."


def run(args: argparse.Namespace) -> int:
    target = WheelTarget(args.python_version, tuple(args.platforms or KAGGLE_PLATFORMS))
    tta = args.tta.split(",") if args.tta and "," in args.tta else args.tta
    result = build_kaggle_dataset(args.models, args.out, target=target, wheels_from=args.wheels_from,
                                  tta=tta, thresholds=args.thresholds,
                                  allow_spec_mismatch=args.allow_spec_mismatch,
                                  allow_unfinished=args.allow_unfinished, force=args.force)
    m = result.manifest
    print(f"{len(m['wheels'])} wheels ({result.wheels_bytes / 2**20:.0f} MiB) for {target.key}, "
          f"{len(m['models']['members'])} models ({m['models']['description']}), TTA {', '.join(m['models']['tta'])}, "
          f"thresholds: {m['models']['thresholds_source']}; built in {result.seconds:.0f} s")
    print(f"not bundled (Kaggle provides): {', '.join(m['provided']['requirements'])}")
    print(result.out)
    return 0
