"""``czii``: one console command, one thin module per subcommand.

Each module in :data:`SUBCOMMANDS` defines ``add_arguments(parser)`` and
``run(args) -> int``; it parses, calls one library function and prints.
Errors a user can fix (:class:`czii.errors.CziiError`) and refusals of the
operating system (``OSError``: permissions, read-only mounts, a full disk)
become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from czii.errors import CziiError

# subcommand name -> (module under czii.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate", "write a simulated CZII dataset (copick project + Kaggle layout)"),
    "score": ("score", "score a submission CSV against a solution with the competition metric"),
    "train": ("train", "train a 3D U-Net heatmap model on one fold of a config"),
    "infer": ("infer", "sliding-window ensemble inference with TTA; writes a submission CSV"),
    "tune": ("tune", "tune per-class thresholds on out-of-fold predictions"),
    "experiment": ("experiment", "train every fold of a config, tune, draw the report and add a leaderboard row"),
    "report": ("report", "rebuild an experiment's figures from its saved outputs"),
    "leaderboard": ("leaderboard", "print the experiments' leaderboard, best first"),
    "ensemble": ("ensemble", "assemble an ensemble YAML from leaderboard rows and score it out-of-fold"),
    "export": ("export", "write a submission's scored picks as RELION 5 / RELION 4 STAR, Dynamo .tbl or CSV"),
    "import": ("import_picks", "read STAR / .tbl / CSV picks into a copick project or Kaggle directory"),
    "export-model": ("export_model", "write a predictor's members as ONNX for `czii infer --runtime onnx`"),
    "kaggle-build": ("kaggle", "build the offline Kaggle dataset folder (wheels, checkpoints, thresholds, config)"),
}


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device`` (cpu, cuda, cuda:N); without ``default`` CUDA when available (torch is imported only
    when the command runs, see :func:`chosen_device`)."""
    parser.add_argument("--device", default=default,
                        help=f"cpu or cuda (default: {default or 'cuda when available, else cpu'})")


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    """``--force``: take over a stale lock of the output (:mod:`czii.locks`), left by a writer that was killed."""
    parser.add_argument("--force", action="store_true",
                        help="take over a stale lock of the output, left by a czii process that was killed or "
                             "crashed (a lock held by a running process is always refused)")


def chosen_device(args: argparse.Namespace) -> str:
    """The ``--device`` given, else ``cuda`` when available, else ``cpu``."""
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``czii`` parser. Only ``command``'s module is imported (its options are added), so a
    command does not pay for the imports of the others (torch, copick, ...)."""
    parser = argparse.ArgumentParser(
        prog="czii", description="Find CZII particles in cryo-ET tomograms: simulate, train, infer, tune, score."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(f"czii.cli.{module}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's stop, `kill`) unwinds like an error: locks are released, temporary files removed
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CziiError as exc:
        print(f"czii {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused: permissions, read-only mount, full disk, missing file
        where = f": {exc.filename}" if exc.filename else ""
        print(f"czii {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
