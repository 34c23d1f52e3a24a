"""``czii train``: train one fold of a config into ``--out``/fold<K> (under torchrun: DDP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from czii.cli import add_device_argument, add_force_argument, chosen_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (inherits configs/base.yaml via 'base:')")
    parser.add_argument("--fold", type=int, default=0, help="fold to hold out for validation (default 0)")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="dataset paths replacing data.sources[].path in order (one per source)")
    parser.add_argument("--out", help="run directory (default runs/<config name>); the fold goes to <out>/fold<K>")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/fold<K>/checkpoints/last.pt")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N",
                        help="stop after N epochs of this call (continue later with --resume)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.epochs=3 patch.size_zyx=[32,64,64]")
    add_device_argument(parser)
    add_force_argument(parser)
    parser.add_argument("--workdir", help="where Kaggle picks are staged for copick (default: a cache folder)")


def run(args: argparse.Namespace) -> int:
    from czii.config import load_config, with_data_paths
    from czii.training.loop import train

    config = load_config(args.config, args.overrides)
    if args.data:
        config = with_data_paths(config, args.data)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    fold_dir = train(config, fold=args.fold, out_dir=out, resume=args.resume, device=chosen_device(args),
                     workdir=args.workdir, max_epochs=args.stop_after_epochs, force=args.force)
    print(fold_dir)
    return 0
